"""Seeded synthetic colonoscopy clips in SUN-SEG's layout, with PNS+-like external maps (SUN-SEG may not be
redistributed; no frames of it are in the repository).

Each clip: a reddish mucosa texture with folds and a vignette, lit from the centre; a polyp (a lighter, lobulated
bump with a specular highlight) drifting smoothly across the frames, and a look-alike that is not annotated (as
bubbles or residue can be), so the frame alone does not say which bump is the polyp. Written as
``<root>/Frame/<clip>/<clip>_a1_ayy_image<k>.jpg`` and ``<root>/GT/<clip>/...png`` (0/255), and optionally the
external network's maps ``<maps>/<clip>/...png`` at PNS+'s 256 x 448 (uint8 probabilities): the true polyp shifted,
blurred, with a missed part and a false-positive blob, so a model that reads the frame can improve on the map. What
a model learns here is the task's structure (pick the object with the map, its outline from the image), not SUN-SEG's
appearance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["PNS_MAP_SIZE", "synthetic_clip", "write_synthetic_sunseg"]

#: (H, W) of PNS+'s saved maps.
PNS_MAP_SIZE = (256, 448)


def _polyp(h: int, w: int, cy: float, cx: float, radius: float, phase: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    angle = np.arctan2(yy - cy, xx - cx)
    edge = radius * (1 + 0.12 * np.cos(3 * angle + phase) + 0.06 * np.cos(5 * angle - phase))
    return np.hypot(yy - cy, xx - cx) <= edge


def synthetic_clip(
    frames: int, size: tuple[int, int], rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``frames`` RGB frames ``(H, W, 3)`` uint8 and their polyp masks ``(H, W)`` bool."""
    h, w = size
    yy, xx = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
    folds = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(2, 4) * yy + rng.uniform(-1, 1) * xx) + rng.uniform(0, 6))
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)), 3)
    light = np.clip(1.2 - 1.1 * np.hypot(yy - 0.5, xx - 0.5), 0.2, 1.0)
    start = np.array([rng.uniform(0.35, 0.65) * h, rng.uniform(0.3, 0.5) * w])
    velocity = np.array([rng.uniform(-0.01, 0.01) * h, rng.uniform(0.005, 0.02) * w])
    radius = rng.uniform(0.10, 0.16) * min(h, w)
    decoy = np.array([h, w]) - start + rng.uniform(-0.1, 0.1, 2) * [h, w]  # the look-alike, across the frame
    images, masks = [], []
    for k in range(frames):
        centres = [start + k * velocity, decoy - 0.5 * k * velocity]
        bumps = [_polyp(h, w, cy, cx, radius, 0.2 * k + j) for j, (cy, cx) in enumerate(centres)]
        rgb = np.zeros((h, w, 3))
        shade = light * (0.75 + 0.1 * folds + 0.05 * texture)
        for (cy, cx), bump in zip(centres, bumps, strict=True):
            soft = ndimage.gaussian_filter(bump.astype(float), 2.0)
            shade = shade + 0.18 * soft
            rgb[..., 1] += 0.12 * soft
            spot = np.exp(-((yy * h - cy + 0.4 * radius) ** 2 + (xx * w - cx + 0.3 * radius) ** 2) / (0.02 * h * w))
            rgb += 0.5 * (spot * bump)[..., None]
        rgb += np.stack([0.85 * shade, 0.42 * shade, 0.35 * shade], axis=-1) + 0.02 * rng.standard_normal((h, w, 3))
        images.append((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
        masks.append(bumps[0] & ~bumps[1])
    return images, masks


def _external_map(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A PNS+-like probability map (256 x 448 uint8) of ``mask``: shifted, blurred, part missed, a false blob."""
    h, w = mask.shape
    shifted = ndimage.shift(mask.astype(float), rng.uniform(-0.05, 0.05, 2) * [h, w], order=0)
    cy, cx = ndimage.center_of_mass(mask) if mask.any() else (h / 2, w / 2)
    yy, xx = np.mgrid[:h, :w]
    shifted[(yy - cy) * rng.choice([-1, 1]) > 0.3 * np.sqrt(mask.sum() / np.pi)] *= 0.3  # a missed side
    blob = np.hypot(yy - rng.uniform(0.1, 0.9) * h, xx - rng.uniform(0.1, 0.9) * w) < 0.06 * min(h, w)
    prob = ndimage.gaussian_filter(np.maximum(shifted, 0.6 * blob), 0.02 * min(h, w))
    prob = np.clip(prob + 0.05 * ndimage.gaussian_filter(rng.standard_normal((h, w)), 2), 0, 1)
    small = Image.fromarray((prob * 255).astype(np.uint8)).resize(PNS_MAP_SIZE[::-1], Image.Resampling.BILINEAR)
    return np.asarray(small)


def write_synthetic_sunseg(
    root: str | Path,
    clips: int = 2,
    frames: int = 5,
    size: tuple[int, int] = (96, 112),
    maps_dir: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """Write a SUN-SEG-layout split (``Frame/``, ``GT/``) under ``root`` and, with ``maps_dir``, external maps."""
    root, rng = Path(root), np.random.default_rng(seed)
    for c in range(clips):
        clip = f"case{c + 1}"
        images, masks = synthetic_clip(frames, size, rng)
        for folder in (root / "Frame" / clip, root / "GT" / clip):
            folder.mkdir(parents=True, exist_ok=True)
        for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
            name = f"{clip}_a{c + 1}_ayy_image{k + 1:04d}"
            Image.fromarray(image).save(root / "Frame" / clip / f"{name}.jpg", quality=92)
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "GT" / clip / f"{name}.png")
            if maps_dir is not None:
                (Path(maps_dir) / clip).mkdir(parents=True, exist_ok=True)
                Image.fromarray(_external_map(mask, rng)).save(Path(maps_dir) / clip / f"{name}.png")
    return root
