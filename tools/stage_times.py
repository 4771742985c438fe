"""Where a bundle run's time goes: wall seconds per stage, from methods timed for the duration of a ``with`` block.

    timer = StageTimer()
    timer.time_instances([loader], "read")            # these objects' __call__ (other instances untimed)
    timer.time_attribute(network, "encode", "encoder") # one object's method
    timer.time_class(SliceGeometry, "logits_to_image", "resize")
    with timer:
        workflow.run()
    timer.seconds  # {"read": ..., "encoder": ...}; stages may nest (the encoder runs inside the inferer)

Patches hold from the ``time_*`` call until the block exits. A stage re-entered inside itself (a method calling
itself through a subclass) is counted once. :func:`time_bundle_run` times a bundle's ``inference.json`` this way.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict

__all__ = ["StageTimer", "time_bundle_run"]


class StageTimer:
    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: defaultdict[str, int] = defaultdict(int)
        self._patches: list[tuple[object, str, object, bool]] = []  # (owner, name, previous, was own attribute)
        self._instance_stage: dict[int, str] = {}
        self._running: set[str] = set()

    def _timed(self, function, stage_of):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            stage = stage_of(args)
            if stage is None or stage in self._running:
                return function(*args, **kwargs)
            self._running.add(stage)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
                self.calls[stage] += 1
                self._running.discard(stage)

        return timed

    def _patch(self, owner, name: str, replacement) -> None:
        own = name in vars(owner)
        self._patches.append((owner, name, vars(owner).get(name), own))
        setattr(owner, name, replacement)

    def time_class(self, cls: type, name: str, stage: str) -> None:
        """Every call of ``cls.<name>`` (all instances) counts as ``stage``."""
        self._patch(cls, name, self._timed(getattr(cls, name), lambda args: stage))

    def time_attribute(self, obj, name: str, stage: str) -> None:
        """Calls of ``obj.<name>`` (made through the attribute, as ``obj.name(...)``) count as ``stage``."""
        self._patch(obj, name, self._timed(getattr(obj, name), lambda args: stage))

    def time_instances(self, objects, stage: str) -> None:
        """``__call__`` of exactly these objects counts as ``stage`` (special methods are looked up on the class,
        so the class is patched and other instances pass through untimed)."""
        for obj in objects:
            cls = type(obj)
            if not any(owner is cls and name == "__call__" for owner, name, _, _ in self._patches):
                self._patch(
                    cls, "__call__", self._timed(cls.__call__, lambda args: self._instance_stage.get(id(args[0])))
                )
            self._instance_stage[id(obj)] = stage

    def __enter__(self) -> StageTimer:
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, previous, own in reversed(self._patches):
            if own:
                setattr(owner, name, previous)
            else:
                delattr(owner, name)
        self._patches.clear()


def time_bundle_run(config_files: list[str], overrides: dict, extra_stages=()) -> dict[str, float]:
    """One ``python -m monai.bundle run`` of an inference config, in process, timed by stage (wall seconds):
    ``setup`` (initialize: network, weights, optimisation), ``read`` (the preprocessing transforms up to the
    loader), ``preprocess`` (the rest), ``inferer`` and inside it ``encoder`` / ``decoder`` (``network.encode`` /
    ``decode``) and ``extra_stages`` (``(class, method, stage)``), ``postprocess`` (inverting the geometry),
    ``write`` (the saver), ``total`` (run only)."""
    from monai.bundle import ConfigWorkflow

    start = time.perf_counter()
    workflow = ConfigWorkflow(config_file=config_files, workflow_type="infer", logging_file=False, **overrides)
    workflow.initialize()
    setup = time.perf_counter() - start
    parser = workflow.parser
    pre = parser.get_parsed_content("preprocessing").transforms
    post = parser.get_parsed_content("postprocessing").transforms
    loader = max(i for i, t in enumerate(pre) if type(t).__name__.startswith("Load"))
    network = parser.get_parsed_content("network")
    timer = StageTimer()
    timer.time_instances(pre[: loader + 1], "read")
    timer.time_instances(pre[loader + 1 :], "preprocess")
    timer.time_instances([t for t in post if "Save" in type(t).__name__], "write")
    timer.time_instances([t for t in post if "Save" not in type(t).__name__], "postprocess")
    timer.time_instances([parser.get_parsed_content("inferer")], "inferer")
    timer.time_attribute(network, "encode", "encoder")
    timer.time_attribute(network, "decode", "decoder")
    for cls, name, stage in extra_stages:
        timer.time_class(cls, name, stage)
    start = time.perf_counter()
    try:
        with timer:
            workflow.run()
    finally:
        workflow.finalize()
    return {"setup": setup, **timer.seconds, "total": time.perf_counter() - start}
