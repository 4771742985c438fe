"""SAM ViT-B image encoder at 1024 px against this machine's GEMM-bound time, ours beside segment-anything's.

    python tools/benchmark_vit_b.py [--rounds 3] [--output_md bundles/medsam/docs/benchmark_vit_b.md]

1. **GEMM rate**: float32 ``torch.mm`` on the encoder's own matrix shapes (4096 tokens of a 64 x 64 grid: the qkv,
   output and MLP projections; ``(M, K) x (K, N)``), best of ``gemm_repeats`` runs each; the highest rate is the
   machine's rate.
2. **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` over one forward of our encoder (matrix products and
   convolutions: everything it counts), by operator; plus the attention products it does not count on the CPU
   (``scaled_dot_product_attention``: ``4 * batch * heads * L * S * E``, QK^T and AV, counted from each call's shapes).
3. **Bound** = FLOPs / rate: the time if every FLOP ran at the GEMM rate and nothing else cost anything; given for
   the counted FLOPs and with the attention products added.
4. Ours (MedSAM's ViT-B: ``build_medsam_vit_b``) and segment-anything's ``ImageEncoderViT`` with the same seeded
   weights, float32, interleaved for ``rounds`` rounds; then every encoder backend of ours
   (:mod:`tools.encoder_backends`: torch / OpenVINO x float32 / bf16). Max abs difference ours vs reference.
5. Where ours spends the time: ``torch.profiler`` operator totals of one forward (self CPU time).

Needs the ``test`` extra (segment-anything). segment-anything imports torchvision; where the registry's torchvision
cannot load with the CPU torch, the test-only stand-in from ``tests/torchvision_standin.py`` is installed first.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import fire
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common.atomic import write_text_atomic  # noqa: E402
from common.bundle import optimise_for_inference  # noqa: E402
from common.networks.medsam import build_medsam_vit_b  # noqa: E402
from tools.encoder_backends import backend_table, compare_encoder_backends  # noqa: E402

TOKENS, DIM = 64 * 64, 768
GEMM_SHAPES = {  # (M, K, N) of the encoder's projections on a 64 x 64 token grid
    "qkv projection": (TOKENS, DIM, 3 * DIM),
    "attention output projection": (TOKENS, DIM, DIM),
    "MLP up (lin1)": (TOKENS, DIM, 4 * DIM),
    "MLP down (lin2)": (TOKENS, 4 * DIM, DIM),
}


def reference_encoder(ours: nn.Module) -> nn.Module:
    """segment-anything's ViT-B ``ImageEncoderViT`` at 1024 px (``tests/sam_reference.py``) with ``ours``'s weights
    (strict)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import torchvision_standin

    torchvision_standin.install_if_broken()
    from sam_reference import reference_image_encoder

    ref = reference_image_encoder(1024, {}, out_chans=256)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref.eval()


def gemm_rates(repeats: int) -> dict[str, float]:
    """GFLOP/s of float32 ``torch.mm`` for each of :data:`GEMM_SHAPES`, best of ``repeats``."""
    rates = {}
    generator = torch.Generator().manual_seed(0)
    for name, (m, k, n) in GEMM_SHAPES.items():
        a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
        torch.mm(a, b)  # warm-up
        best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
        rates[name] = 2 * m * k * n / best / 1e9
    return rates


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def counted_flops(encoder: nn.Module, image: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one forward and FLOPs by operator (``FlopCounterMode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        encoder(image)
    by_op = {str(op).removeprefix("aten."): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


def attention_flops(encoder: nn.Module, image: torch.Tensor) -> int:
    """FLOPs of the two products of every ``F.scaled_dot_product_attention`` call in one forward:
    ``2 * L * S * E`` (QK^T) + ``2 * L * S * Ev`` (AV) per batch item and head."""
    real = F.scaled_dot_product_attention
    total = 0

    def counting(q, k, v, *args, **kwargs):
        nonlocal total
        total += 2 * q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return real(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = counting
    try:
        with torch.no_grad():
            encoder(image)
    finally:
        F.scaled_dot_product_attention = real
    return total


def profile_ops(encoder: nn.Module, image: torch.Tensor, top: int = 10) -> tuple[list[tuple[str, float]], float]:
    """``[(operator, self CPU ms)]`` of the ``top`` costliest operators of one forward, and the profiled total."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        encoder(image)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1000
    return [(e.key, e.self_cpu_time_total / 1000) for e in events[:top]], total


def main(rounds: int = 3, gemm_repeats: int = 5, threads: int | None = None, output_md: str | None = None) -> dict:
    """Run the comparison on the CPU (see the module docstring); ``output_md``: write the report there."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    if int(rounds) < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    torch.manual_seed(0)
    network = build_medsam_vit_b().eval()
    optimise_for_inference(network)
    ours = network.image_encoder
    ref = reference_encoder(ours)
    image = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))

    rates = gemm_rates(int(gemm_repeats))
    rate = max(rates.values())
    print("GEMM GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()), flush=True)
    flops, by_op = counted_flops(ours, image)
    if not any("scaled_dot_product" in op for op in by_op):
        by_op["scaled_dot_product_attention (added: not counted on the CPU)"] = attention_flops(ours, image)
    bounds = {"counted FLOPs": flops / (rate * 1e9), "with the attention products": sum(by_op.values()) / (rate * 1e9)}
    bound = bounds["with the attention products"]
    print(f"encoder: {sum(by_op.values()) / 1e9:.1f} GFLOP -> bound {bound:.2f} s at {rate:.1f} GFLOP/s", flush=True)

    with torch.no_grad():
        difference = float((ours(image) - ref(image)).abs().max())  # also the warm-up
        times: dict[str, list[float]] = {"ours": [], "segment-anything": []}
        sides = {"ours": lambda: ours(image), "segment-anything": lambda: ref(image)}
        for r in range(int(rounds)):
            for side in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                times[side].append(_seconds(sides[side]))
                print(f"  round {r + 1}: {side} {times[side][-1]:.2f} s", flush=True)
    seconds = {side: statistics.median(t) for side, t in times.items()}
    backends = compare_encoder_backends(network, image, int(rounds))
    ops, profiled = profile_ops(ours, image)

    info = {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "host": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "CPU": f"{platform.processor() or platform.machine()}; os.cpu_count() = {os.cpu_count()}",
        "torch": f"{torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}",
    }
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)
    command = "python " + " ".join(shlex.quote(a) for a in [script] + sys.argv[1:])
    report = render(command, info, rates, by_op, bounds, seconds, difference, backends, ops, profiled, rounds)
    if output_md:
        write_text_atomic(output_md, report)
        print(f"wrote {output_md}", flush=True)
    return {"bound_s": round(bound, 2), **{f"{k}_over_bound": round(v / bound, 2) for k, v in seconds.items()}}


def _count(item: tuple[str, int]) -> int:
    return -item[1]


def render(command, info, rates, by_op, bounds, seconds, difference, backends, ops, profiled, rounds) -> str:
    rate = max(rates.values())
    flops = sum(by_op.values())
    lines = [
        "# SAM ViT-B image encoder (1024 px, float32) against the GEMM-bound time",
        "",
        f"Generated by `{command}`. Seeded random weights (cost, not accuracy), batch 1, inference mode.",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        "",
        "## This machine's float32 GEMM rate (`torch.mm`, the encoder's shapes, best of the repeats)",
        "",
        "| shape (M x K x N) | GFLOP/s |",
        "|---|---|",
        *[f"| {name}: {'x'.join(map(str, GEMM_SHAPES[name]))} | {v:.1f} |" for name, v in rates.items()],
        "",
        f"Rate used for the bound: **{rate:.1f} GFLOP/s** (the highest).",
        "",
        "## FLOPs of one forward (`torch.utils.flop_counter.FlopCounterMode`, plus the attention products)",
        "",
        "| operator | GFLOP | share |",
        "|---|---|---|",
        *[f"| {op} | {n / 1e9:.1f} | {100 * n / flops:.1f} % |" for op, n in sorted(by_op.items(), key=_count)],
        f"| **total** | **{flops / 1e9:.1f}** | |",
        "",
        "## Ours, segment-anything and the bound",
        "",
        "| encoder | s (median) | " + " | ".join(f"x the bound ({name})" for name in bounds) + " |",
        "|---|---|" + "---|" * len(bounds),
        *[
            f"| GEMM bound, {name} (FLOPs / rate) | {b:.2f} | "
            + " | ".join(f"{b / other:.2f}" for other in bounds.values())
            + " |"
            for name, b in bounds.items()
        ],
        *[
            f"| {side} | {s:.2f} | " + " | ".join(f"**{s / b:.2f}x**" for b in bounds.values()) + " |"
            for side, s in seconds.items()
        ],
        "",
        f"Ours is {seconds['segment-anything'] / seconds['ours']:.2f}x faster than segment-anything; max abs "
        f"embedding difference {difference:.2e}. Medians of {rounds} interleaved rounds after a warm-up.",
        "",
        "## Every encoder backend of ours (`precision` x `encoder_backend`)",
        "",
        *backend_table(backends),
        "",
        f"## Where ours spends the time (`torch.profiler`, one forward, self CPU time, {profiled:.0f} ms profiled)",
        "",
        "| operator | self CPU ms | share |",
        "|---|---|---|",
        *[f"| `{name}` | {ms:.0f} | {100 * ms / profiled:.1f} % |" for name, ms in ops],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    fire.Fire(main)
