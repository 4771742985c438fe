"""Fold trained SAMIHS PR adapters into the frozen SAM weights (the method's "parameter refactoring").

Usage:
    python tools/fold_pr_adapters.py bundles/samihs_ich/models/model.pt folded_sam.pt [--check] [--pad_before_norm]

Reads a SAMIHS ``model.pt`` (strict load into ``build_samihs``), folds every adapter into the following qkv / MLP
weights and the LayerNorm bias (``common.networks.samihs.fold_pr_adapters``) and writes a plain SAM state dict in
the official key layout (174,432 fewer parameters at ViT-B), atomically. ``--check`` runs both networks on a
seeded random image with one click and prints the largest difference of the logits. ``sizes``: other
``build_samihs`` arguments (defaults: the published sizes).
"""

from __future__ import annotations

import os
import sys

import fire
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.atomic import atomic_path  # noqa: E402
from common.networks import samihs  # noqa: E402
from common.networks.sam import build_sam_vit, load_checkpoint, load_state_dict_file  # noqa: E402


def fold(source: str, out: str, check: bool = False, **sizes) -> float | None:
    """Write the folded SAM state dict of ``source`` to ``out``; with ``check`` return the max logit difference."""
    model = samihs.build_samihs(**sizes).eval()
    load_checkpoint(model, load_state_dict_file(source), strict=True)
    folded = samihs.fold_pr_adapters(model)
    sam_sizes = {k: v for k, v in sizes.items() if k not in ("bottleneck", "tie_up_projection", "use_boxes")}
    plain = build_sam_vit(**sam_sizes).eval()
    plain.load_state_dict(folded, strict=True)
    with atomic_path(out) as tmp:
        torch.save(folded, tmp)
    removed = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    print(f"wrote {out}: plain SAM, {removed:,} adapter parameters folded")
    if not check:
        return None
    size = model.image_size[0]
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, size, size, generator=g)
    click = dict(point_coords=torch.tensor([[[size / 2, size / 3]]]), point_labels=torch.ones(1, 1, dtype=torch.long))
    with torch.no_grad():
        diff = float((model(image, **click) - plain(image.expand(-1, 3, -1, -1), **click)).abs().max())
    print(f"largest logit difference, adapted vs folded: {diff:.3g}")
    return diff


if __name__ == "__main__":
    fire.Fire(fold)
