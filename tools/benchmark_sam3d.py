"""Benchmark one full-size 3DSAM-adapter forward (128^3 crop): fused input path vs the literal published one.

Each path runs in its own fresh process (so peak memory is not shared), with the same seeded weights, the
same crop and the same points; the outputs are compared. Peak memory is the process's peak resident set
(CPU) or ``torch.cuda.max_memory_allocated`` (GPU) during the forward, minus what was resident before it
(weights and input).

    python tools/benchmark_sam3d.py [--volume PATH --label PATH --label_value 7] [--device cpu|cuda]
        [--repeats 1] [--output_md bundles/3dsam_pancreas/docs/benchmark.md]

Without ``--volume`` the crop is random noise; with it, the 128^3 crop (1 mm, z-scored as the bundle does) is
centred on the given label's voxels, and the points are 10 of them.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fire
import torch

from common.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
ROI = 128


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _patch(volume: str | None, label: str | None, label_value: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, 1, 128, 128, 128)`` crop and ``(1, 10, 3)`` points, as the bundle's evaluation makes them."""
    gen = torch.Generator().manual_seed(seed)
    if volume is None:
        return torch.randn(1, 1, ROI, ROI, ROI, generator=gen), torch.randint(0, ROI, (1, 10, 3), generator=gen).float()
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, ScaleIntensityRanged

    from common.methods.sam3d_adapter.point_patch import crop_patch, patch_start
    from common.methods.sam3d_adapter.resample import ScaleResampled

    load = Compose(
        [
            LoadImaged(["image", "label"], reader="NibabelReader", image_only=True, dtype=torch.float32),
            EnsureChannelFirstd(["image", "label"]),
            ScaleResampled(["image", "label"], mode=["trilinear", "nearest"]),
            ScaleIntensityRanged("image", -39.0, 204.0, -39.0, 204.0, clip=True),
            NormalizeIntensityd("image", subtrahend=68.45214, divisor=63.422806),
        ]
    )
    d = load({"image": volume, "label": label})
    voxels = torch.nonzero(d["label"][0].as_tensor() == label_value).float()
    if len(voxels) == 0:
        raise ValueError(f"label value {label_value} does not occur in {label}")
    points = voxels[torch.randint(0, len(voxels), (10,), generator=gen)]
    start = patch_start(points, ROI)
    image = crop_patch(d["image"].as_tensor(), start, ROI)
    return image[None], (points - start)[None]


def run_one(
    input_path: str, device: str, repeats: int, volume: str | None, label: str | None, label_value: int, out: str
) -> None:
    """Child process: build, run ``repeats`` forwards, write timing/memory JSON and the logits to ``out``."""
    from common.networks.sam3d_adapter import build_sam3d_adapter

    torch.manual_seed(0)
    model = build_sam3d_adapter(input_path=input_path).eval().to(device)
    image, points = _patch(volume, label, label_value, seed=0)
    image, points = image.to(device), points.to(device)
    cuda = device.startswith("cuda")
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            else:
                base = _rss_mb()
            start = time.perf_counter()
            logits = model(image, points)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = (
        (torch.cuda.max_memory_allocated() - base) / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    )
    torch.save(logits.cpu(), out + ".pt")
    Path(out + ".json").write_text(json.dumps({"path": input_path, "times_s": times, "peak_mb": peak}))


def main(
    volume: str | None = None,
    label: str | None = None,
    label_value: int = 7,
    device: str = "cpu",
    repeats: int = 1,
    output_md: str | None = None,
) -> dict:
    """Run both paths in fresh processes, compare outputs, print (and optionally write) a Markdown table."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("fused", "literal"):
            out = os.path.join(tmp, path)
            cmd = [
                sys.executable,
                __file__,
                "run_one",
                path,
                device,
                str(repeats),
                str(volume),
                str(label),
                str(label_value),
                out,
            ]
            subprocess.run(cmd, check=True, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
            results[path] = json.loads(Path(out + ".json").read_text())
            results[path]["logits"] = torch.load(out + ".pt", weights_only=True)
    diff = float((results["fused"]["logits"] - results["literal"]["logits"]).abs().max())
    agree = float((results["fused"]["logits"].argmax(1) == results["literal"]["logits"].argmax(1)).float().mean())
    fused, literal = results["fused"], results["literal"]
    t_f, t_l = min(fused["times_s"]), min(literal["times_s"])
    lines = [
        "# 3DSAM-adapter: one full-size forward (128^3 crop, 32^3 tokens), fused vs literal input path",
        "",
        f"Command: `python tools/benchmark_sam3d.py{' --volume ' + volume if volume else ''}"
        f"{' --label ' + label + f' --label_value {label_value}' if label else ''} --device {device}"
        f" --repeats {repeats}`",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch "
        f"{torch.__version__}, device {device}; inference mode (no autograd), batch 1, 10 points.",
        "",
        "| input path | forward time (s, best of %d) | peak memory above weights+input (MiB) |" % repeats,
        "|---|---|---|",
        "| literal (trilinear x4 to 3x512^3, per-slice 16x16 conv, depth conv) "
        f"| {t_l:.1f} | {literal['peak_mb']:.0f} |",
        f"| fused (one 6^3 stride-4 Conv3d on the crop) | {t_f:.1f} | {fused['peak_mb']:.0f} |",
        "",
        f"Peak memory ratio literal / fused: **{literal['peak_mb'] / fused['peak_mb']:.2f}x**; "
        f"time ratio: {t_l / t_f:.2f}x.",
        f"Same output: max |logit difference| = {diff:.2e}; voxel-wise argmax agreement {agree:.6f}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if output_md:
        write_text_atomic(output_md, text)
    return {
        "fused": {k: v for k, v in fused.items() if k != "logits"},
        "literal": {k: v for k, v in literal.items() if k != "logits"},
        "max_abs_diff": diff,
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "run_one":
        _, _, p, dev, reps, vol, lab, val, out = sys.argv
        run_one(p, dev, int(reps), None if vol == "None" else vol, None if lab == "None" else lab, int(val), out)
    else:
        fire.Fire(main)
