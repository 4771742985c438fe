"""Cost of SAMUS and HQ-SAMUS at 256 px on this machine: forward, forward + backward, and embedding reuse.

    python tools/benchmark_samus.py [--rounds 3] [--prompts 8] [--batch 1]
        [--output_md bundles/samus_busi/docs/benchmark.md]

Published sizes with seeded random weights (cost, not accuracy), float32, batch ``batch``, one click per image:

* ``forward``: inference mode, the whole network (encoder + prompt encoder + decoder);
* ``forward+backward``: training mode with the published trainable set (SAMUS: 39.7 M; HQ-SAMUS joint: 40.7 M;
  HQ-SAMUS HQ-only: 1.07 M, the encoder without gradients), loss = mean logit;
* embedding reuse: ``prompts`` clicks on one image, decoded from one encoder call
  (``ObjectPromptInferer``'s way) versus one full forward per click; the ratio is the speed-up.

Models are timed interleaved, round by round, and the median of ``rounds`` is reported (the machine is shared;
ratios within one run are what to read). Writes a Markdown table when ``output_md`` is given.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import fire
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.atomic import write_text_atomic  # noqa: E402
from common.networks import samus  # noqa: E402
from tools.encoder_backends import backend_table, compare_encoder_backends  # noqa: E402

MODELS = {
    "SAMUS": dict(),
    "HQ-SAMUS (joint)": dict(hq=True),
    "HQ-SAMUS (HQ only)": dict(hq=True, hq_schedule="hq_only"),
}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _clicks(batch: int, n: int = 1):
    g = torch.Generator().manual_seed(1)
    return dict(
        point_coords=torch.rand(batch, n, 2, generator=g) * 255, point_labels=torch.ones(batch, n, dtype=torch.long)
    )


def run(rounds: int = 3, prompts: int = 8, batch: int = 1, output_md: str | None = None) -> dict:
    torch.manual_seed(0)
    models = {name: samus.build_samus(**kw) for name, kw in MODELS.items()}
    images = torch.rand(batch, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "forward+backward": []} for name in models}
    reuse: dict[str, list[float]] = {"encode once": [], "forward per click": []}
    sam = models["SAMUS"]
    one = images[:1]
    many = [_clicks(1) for _ in range(prompts)]

    def encode_once():
        emb = sam.encode(one)
        for c in many:
            sam.decode(emb, **c)

    def forward_per_click():
        for c in many:
            sam(one, **c)

    for r in range(rounds):
        for name, model in models.items():
            model.eval()
            with torch.inference_mode():
                times[name]["forward"].append(_seconds(lambda: model(images, **_clicks(batch))))
            model.train()
            model.zero_grad(set_to_none=True)
            times[name]["forward+backward"].append(_seconds(lambda: model(images, **_clicks(batch)).mean().backward()))
        sam.eval()
        with torch.inference_mode():
            reuse["encode once"].append(_seconds(encode_once))
            reuse["forward per click"].append(_seconds(forward_per_click))
        print(f"round {r + 1}/{rounds} done", flush=True)

    med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    reuse_med = {k: statistics.median(v) for k, v in reuse.items()}
    sam.eval()
    backends = compare_encoder_backends(sam, one.expand(-1, 3, -1, -1), rounds)
    counts = {
        name: (sum(p.numel() for p in m.parameters() if p.requires_grad), sum(p.numel() for p in m.parameters()))
        for name, m in models.items()
    }
    lines = [
        "| model | trainable / total parameters | forward (s) | forward + backward (s) |",
        "|---|---|---|---|",
        *[
            f"| {name} | {counts[name][0]:,} / {counts[name][1]:,} | {med[name]['forward']:.2f} | "
            f"{med[name]['forward+backward']:.2f} |"
            for name in models
        ],
        "",
        f"Embedding reuse, {prompts} clicks on one image (SAMUS, inference mode):",
        "",
        "| encoder calls | time (s) |",
        "|---|---|",
        f"| 1 (encode once, {prompts} decodes) | {reuse_med['encode once']:.2f} |",
        f"| {prompts} (one forward per click) | {reuse_med['forward per click']:.2f} |",
        "",
        f"Speed-up from reuse: {reuse_med['forward per click'] / reuse_med['encode once']:.1f}x.",
        "",
        "Image encoder backends (`precision` x `encoder_backend`; SAMUS's encoder, 256 px). OpenVINO runs only "
        "encoders with one image in and one embedding out; SAMUS's hands its CNN branch's features on through its "
        "context, so only torch serves it:",
        "",
        *backend_table(backends),
    ]
    header = (
        f"batch {batch}, 256 x 256, float32, median of {rounds} interleaved rounds; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(header)
    print("\n".join(lines))
    if output_md:
        command = f"python tools/benchmark_samus.py --rounds {rounds} --prompts {prompts} --batch {batch}"
        text = (
            "# SAMUS / HQ-SAMUS: cost at 256 px on this machine\n\n"
            f"`{command} --output_md {output_md}`: {header}. Seeded random weights (cost, not accuracy); one click per "
            "image; backward with the published trainable set.\n\n" + "\n".join(lines) + "\n"
        )
        write_text_atomic(output_md, text)
    return {"times": med, "reuse": reuse_med}


if __name__ == "__main__":
    fire.Fire(run)
