"""Seeded synthetic breast-ultrasound frames in BUSI's folder layout, for tests and smoke runs (no BUSI offline).

Each frame: layered tissue echotexture (skin, fat, glandular bands with curved boundaries) times correlated
Rayleigh speckle and depth attenuation; ``benign``/``malignant`` frames hold a hypoechoic lesion with a lobulated
outline (smooth for benign, spiculated for malignant) and the posterior acoustic effect of its type (enhancement
behind benign cysts/fibroadenomas, shadowing behind carcinomas); ``normal`` frames hold none (empty mask). Some
lesion frames get a second small lesion saved as ``<name>_mask_1.png``, as BUSI does. What a model learns here is
the task's shape (find the dark blob under the click), not BUSI's appearance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["synthetic_frame", "write_synthetic_busi"]


def _lesion_mask(h: int, w: int, rng: np.random.Generator, malignant: bool, scale: float) -> np.ndarray:
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = scale * rng.uniform(0.10, 0.18) * h, scale * rng.uniform(0.12, 0.24) * w
    yy, xx = np.mgrid[:h, :w]
    angle = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
    radius = np.hypot((yy - cy) / ry, (xx - cx) / rx)
    harmonics = (7, 11) if malignant else (2, 3)
    edge = 1.0 + sum(
        rng.uniform(0.03, 0.12 if malignant else 0.06) * np.cos(k * angle + rng.uniform(0, 6)) for k in harmonics
    )
    return radius <= edge


def synthetic_frame(h: int, w: int, group: str, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """One frame ``(h, w)`` uint8 and its lesion masks (``[]`` for ``normal``; 1 or 2 boolean masks)."""
    yy = np.arange(h)[:, None] / h
    curve = 0.03 * np.sin(np.linspace(0, np.pi, w) * rng.uniform(0.5, 1.5))[None, :]
    bands = np.stack([0.08, 0.25, 0.55]) + rng.uniform(-0.03, 0.03, 3)
    tissue = np.full((h, w), 0.75)
    tissue[yy < bands[2] + curve] = 0.45  # fat (darker)
    tissue[yy < bands[1] + curve] = 0.6
    tissue[yy < bands[0] + curve] = 0.9  # skin line
    tissue = ndimage.gaussian_filter(tissue, 1.5) * (1 + 0.15 * ndimage.gaussian_filter(rng.standard_normal((h, w)), 6))
    masks: list[np.ndarray] = []
    if group != "normal":
        malignant = group == "malignant"
        masks.append(_lesion_mask(h, w, rng, malignant, 1.0))
        if rng.uniform() < 0.25:
            extra = _lesion_mask(h, w, rng, malignant, 0.4) & ~ndimage.binary_dilation(masks[0], iterations=3)
            if extra.sum() > 10:
                masks.append(extra)
        for mask in masks:
            cols = mask.any(0)
            bottom = np.where(mask.any(1))[0].max()
            behind = np.zeros((h, w), bool)
            behind[bottom:, cols] = True
            effect = ndimage.gaussian_filter(behind.astype(float), 2)
            tissue *= 1 - 0.5 * effect if malignant else 1 + 0.4 * effect
            soft = ndimage.gaussian_filter(mask.astype(float), 1.0 if malignant else 0.6)
            tissue = tissue * (1 - soft) + soft * rng.uniform(0.12, 0.25)
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, (h, w)), 0.7)
    attenuation = np.exp(-1.2 * yy)
    image = tissue * speckle / speckle.mean() * attenuation
    return (np.clip(image * 200, 0, 255)).astype(np.uint8), masks


def write_synthetic_busi(
    out_dir: str, per_group: int = 8, size: tuple[int, int] = (96, 128), seed: int = 0, normal: int = 2
) -> Path:
    """Write ``<out_dir>/Dataset_BUSI_with_GT/{benign,malignant,normal}/`` with ``per_group`` benign and malignant
    frames and ``normal`` normal ones (``size = (H, W)``), BUSI's names (``benign (1).png``, ``benign (1)_mask.png``).
    Returns the ``Dataset_BUSI_with_GT`` folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(out_dir) / "Dataset_BUSI_with_GT"
    for group, count in (("benign", per_group), ("malignant", per_group), ("normal", normal)):
        folder = root / group
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            image, masks = synthetic_frame(size[0], size[1], group, rng)
            Image.fromarray(image, mode="L").save(folder / f"{group} ({i}).png")
            for j, mask in enumerate(masks or [np.zeros(size, bool)]):
                suffix = "_mask" if j == 0 else f"_mask_{j}"
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(folder / f"{group} ({i}){suffix}.png")
    return root
