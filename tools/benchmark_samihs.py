"""Cost of SAMIHS at 1024 px on this machine: one slice, embedding reuse, and the folded adapters.

    python tools/benchmark_samihs.py [--rounds 2] [--prompts 4] [--output_md bundles/samihs_ich/docs/benchmark.md]

Published sizes (SAM ViT-B, 1024 px, PR adapters) with seeded random weights and random adapter values (cost, not
accuracy), float32, one slice, one click per prompt, inference mode:

* ``SAMIHS forward``: encoder with its 24 PR adapters + prompt encoder + decoder, one click;
* ``folded SAM forward``: the same network after :func:`~common.networks.samihs.fold_pr_adapters` (a plain SAM
  ViT-B, no adapter work); its output is checked against SAMIHS's;
* embedding reuse: ``prompts`` clicks on one slice from one encoder call (what volume inference and the MONAI Label
  embedding cache do) versus one full forward per click.

Interleaved round by round, the median of ``rounds`` reported (the machine is shared: read the ratios).
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
from common.networks import samihs  # noqa: E402
from common.networks.sam import GreySam, build_sam_vit  # noqa: E402
from tools.encoder_backends import backend_table, compare_encoder_backends  # noqa: E402


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _click(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(point_coords=torch.rand(1, 1, 2, generator=g) * 1023, point_labels=torch.ones(1, 1, dtype=torch.long))


def _models() -> tuple[samihs.Samihs, GreySam]:
    torch.manual_seed(0)
    model = samihs.build_samihs().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter_" in name:  # trained-looking adapters, so folding has work to show
                p.normal_(0.0, 0.02)
    sam = build_sam_vit("vit_b", image_size=1024)
    sam.load_state_dict(samihs.fold_pr_adapters(model), strict=True)
    folded = GreySam(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder).eval()
    return model, folded


def run(rounds: int = 2, prompts: int = 4, output_md: str | None = None) -> dict:
    model, folded = _models()
    image = torch.rand(1, 1, 1024, 1024, generator=torch.Generator().manual_seed(0))
    clicks = [_click(i) for i in range(prompts)]
    times: dict[str, list[float]] = {k: [] for k in ("samihs", "folded", "encode once", "forward per click")}
    with torch.inference_mode():
        diff = float((model(image, **clicks[0]) - folded(image, **clicks[0])).abs().max())
        for r in range(rounds):
            times["samihs"].append(_seconds(lambda: model(image, **clicks[0])))
            times["folded"].append(_seconds(lambda: folded(image, **clicks[0])))

            def encode_once():
                embedding = model.encode(image)
                for c in clicks:
                    model.decode(embedding, **c)

            times["encode once"].append(_seconds(encode_once))
            times["forward per click"].append(_seconds(lambda: [model(image, **c) for c in clicks]))
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    backends = compare_encoder_backends(model, image.expand(-1, 3, -1, -1), rounds)
    lines = [
        "| network, one 1024 px slice, one click | time (s) |",
        "|---|---|",
        f"| SAMIHS (24 PR adapters) | {med['samihs']:.1f} |",
        f"| folded: plain SAM ViT-B, same output (max abs logit diff {diff:.1e}) | {med['folded']:.1f} |",
        "",
        f"Folding saves {100 * (1 - med['folded'] / med['samihs']):.1f} % of a forward "
        f"({med['samihs'] / med['folded']:.3f}x).",
        "",
        f"Embedding reuse, {prompts} clicks on one slice:",
        "",
        "| encoder calls | time (s) |",
        "|---|---|",
        f"| 1 (encode once, {prompts} decodes) | {med['encode once']:.1f} |",
        f"| {prompts} (one forward per click) | {med['forward per click']:.1f} |",
        "",
        f"Speed-up from reuse: {med['forward per click'] / med['encode once']:.2f}x.",
        "",
        "Image encoder backends (`precision` x `encoder_backend`; SAMIHS's encoder with its adapters, 1024 px):",
        "",
        *backend_table(backends),
    ]
    header = (
        f"1 x 1 x 1024 x 1024, float32, inference mode, median of {rounds} interleaved rounds; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(header)
    print("\n".join(lines))
    if output_md:
        command = f"python tools/benchmark_samihs.py --rounds {rounds} --prompts {prompts}"
        text = (
            "# SAMIHS: cost at 1024 px on this machine\n\n"
            f"`{command} --output_md {output_md}`: {header}. Seeded random weights and adapters (cost, not "
            "accuracy).\n\n" + "\n".join(lines) + "\n"
        )
        write_text_atomic(output_md, text)
    return {"times": med, "folded_max_abs_diff": diff}


if __name__ == "__main__":
    fire.Fire(run)
