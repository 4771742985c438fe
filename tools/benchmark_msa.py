"""Cost of one Medical SAM Adapter forward on a 96^3 crop (96 slices of 96 x 96 pixels) of real CT, on this machine.

    python tools/benchmark_msa.py [--image_size 1024] [--num_slices 96] [--volume PATH --label PATH --label_value 5]
        [--output_md bundles/msa/docs/benchmark.md]

The crop is taken at 1.5 x 1.5 x 2 mm around the given structure (as the bundle's preprocessing makes it; smaller
crops than ``crop_size`` are zero-padded), every slice gets one click (positive on the structure, negative
elsewhere), and the ViT-B model with the depth branch runs once in inference mode (random adapters on random SAM
weights: cost, not accuracy). Reports wall time and the peak resident memory above what was resident before the
forward. Without ``--volume`` the crop is random.
"""

from __future__ import annotations

import os
import platform
import resource
import time

import fire
import torch


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _crop(volume: str | None, label: str | None, label_value: int, size: int, depth: int):
    """``(1, 1, size, size, depth)`` CT in [0, 1] around the structure and its click map, one click per slice."""
    import numpy as np

    from common.methods.msa.slice_clicks import slice_click_map

    rng = np.random.RandomState(0)
    if volume is None:
        lab = torch.zeros(1, size, size, depth, dtype=torch.long)
        lab[0, size // 4 : size // 2, size // 4 : size // 2] = 1
        return torch.rand(1, 1, size, size, depth), slice_click_map(lab, 1, rng)[None]
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialCropd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    load = Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            ScaleIntensityRanged("image", -175, 250, 0.0, 1.0, clip=True),
            Orientationd(keys, axcodes="RAS"),
            Spacingd(keys, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
        ]
    )
    d = load({"image": volume, "label": label})
    centre = torch.nonzero(d["label"][0] == label_value).float().mean(0).long().tolist()
    d = Compose(
        [SpatialCropd(keys, roi_center=centre, roi_size=(size, size, depth)), SpatialPadd(keys, (size, size, depth))]
    )(d)
    lab = d["label"].as_tensor().round().long()
    return d["image"].as_tensor()[None], slice_click_map(lab, label_value, rng)[None]


def main(
    image_size: int = 1024,
    num_slices: int = 96,
    crop_size: int = 96,
    depth_branch: bool = True,
    volume: str | None = None,
    label: str | None = None,
    label_value: int = 5,
    output_md: str | None = None,
) -> dict:
    """``depth_branch=False`` runs the 2-D model (no depth branch) on ``num_slices`` slices: the per-slice cost."""
    from common.networks.msa import build_msa

    torch.manual_seed(0)
    model = build_msa(image_size=image_size, num_slices=num_slices if depth_branch else None).eval()
    image, clicks = _crop(volume, label, label_value, crop_size, num_slices)
    base = _rss_mib()
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(image, clicks)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    result = {
        "image_size": image_size,
        "num_slices": num_slices,
        "depth_branch": depth_branch,
        "seconds": seconds,
        "peak_mib": peak,
        "output_shape": list(logits.shape),
    }
    text = (
        f"| {image_size} | {num_slices} x {crop_size}^2 | {'yes' if depth_branch else 'no'} | {seconds:.1f} | "
        f"{peak:.0f} | {seconds / num_slices:.2f} |\n"
    )
    print(
        f"MSA forward on a {crop_size}x{crop_size}x{num_slices} crop at {image_size} px, {platform.machine()}, "
        f"{os.cpu_count()} threads, torch {torch.__version__}: {result}"
    )
    if output_md:
        with open(output_md, "a") as f:
            f.write(text)
    return result


if __name__ == "__main__":
    fire.Fire(main)
