"""``tools/stage_times.StageTimer`` (the benchmarks' time breakdown): only the objects named are timed, nested
stages are timed each, a stage re-entered inside itself counts once, and every patch is undone."""

from __future__ import annotations

import time

from tools.stage_times import StageTimer


class Step:
    def __call__(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


class Outer:
    def __init__(self, step: Step) -> None:
        self.step = step

    def run(self) -> None:
        self.step(0.05)
        time.sleep(0.02)


def test_stage_timer_times_only_what_it_is_told_and_restores():
    timed, untimed = Step(), Step()
    original = Step.__call__
    outer = Outer(timed)
    timer = StageTimer()
    timer.time_instances([timed], "step")
    timer.time_attribute(outer, "run", "outer")
    with timer:
        outer.run()
        untimed(0.05)
    assert timer.calls == {"step": 1, "outer": 1}
    assert 0.05 <= timer.seconds["step"] < timer.seconds["outer"] < 0.05 + 0.02 + 0.04
    assert Step.__call__ is original and "run" not in vars(outer)  # patches undone


def test_a_stage_reentered_inside_itself_counts_once():
    class Recursive:
        def go(self, depth: int) -> None:
            time.sleep(0.01)
            if depth:
                self.go(depth - 1)

    timer = StageTimer()
    timer.time_class(Recursive, "go", "go")
    with timer:
        Recursive().go(2)
    assert timer.calls["go"] == 1 and 0.03 <= timer.seconds["go"] < 0.1
    assert "go" in vars(Recursive)  # its own method is back
