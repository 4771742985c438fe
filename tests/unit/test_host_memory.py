"""glibc keeps freed tensor memory for re-use once ``keep_freed_memory`` ran (page faults counted in a fresh
process), the user's own malloc settings win, and ``optimise_for_inference`` applies it on the CPU."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from common import host_memory
from common.bundle import optimise_for_inference
from common.networks.medsam import build_lite_medsam

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Fills a fresh 64 MiB tensor 12 times and counts the page faults of the last fill, before and after the call (with
# the thresholds raised glibc settles on re-using the freed blocks after a few rounds: 7 with glibc 2.36).
FAULTS = textwrap.dedent(
    """
    import json, resource, torch
    from common.host_memory import keep_freed_memory

    def faults_of_a_fresh_tensor():
        for _ in range(12):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.empty(16 * 1024 * 1024).fill_(1.0)  # 64 MiB, freed at once
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        return faults

    default = faults_of_a_fresh_tensor()
    applied = keep_freed_memory()
    print(json.dumps({"default": default, "applied": applied, "after": faults_of_a_fresh_tensor()}))
    """
)


def _faults(**env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], cwd=REPO_ROOT, env={**environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's; elsewhere keep_freed_memory leaves malloc alone")
def test_freed_tensors_are_reused_without_page_faults():
    result = _faults()
    assert result["default"] > 10_000  # 16,384 pages of 4 KiB: glibc maps the block afresh every time
    assert result["applied"] is True
    assert result["after"] < 500


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_the_users_malloc_setting_wins():
    result = _faults(MALLOC_MMAP_THRESHOLD_="131072")
    assert result["applied"] is False
    assert result["after"] > 10_000


@pytest.mark.parametrize(
    "environ, reason",
    [
        ({}, None),
        ({"MALLOC_MMAP_THRESHOLD_": "131072"}, "MALLOC_MMAP_THRESHOLD_"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}, "GLIBC_TUNABLES"),
        ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, None),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD"),
        ({"LD_PRELOAD": "/opt/lib/libfoo.so"}, None),
    ],
)
def test_user_chose_allocator(environ, reason):
    assert host_memory.user_chose_allocator(environ) == reason


def test_optimise_for_inference_keeps_freed_memory_on_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(True) or True)
    optimise_for_inference(build_lite_medsam().eval())
    assert calls == [True]
