"""bf16 encoder inference (``common.networks.precision``): resolved per device, switched both ways, weights and
state dict untouched, and every network family's outputs within a stated tolerance of float32 (random weights;
the real-data guard for MedSAM is ``tests/real/test_bf16_masks.py``)."""

from __future__ import annotations

import pytest
import torch

from common.networks import precision as precision_module
from common.networks.medsam import build_lite_medsam
from common.networks.msa import TINY_SIZES as MSA_TINY
from common.networks.msa import build_msa
from common.networks.precision import resolve_precision, set_encoder_precision
from common.networks.sam3d_adapter import TINY_SIZES as SAM3D_TINY
from common.networks.sam3d_adapter import build_sam3d_adapter
from common.networks.samihs import TINY_SIZES as SAMIHS_TINY
from common.networks.samihs import build_samihs
from common.networks.samus import TINY_SIZES as SAMUS_TINY
from common.networks.samus import build_samus

# relative L2 error of the logits, bf16 encoder vs float32; measured 4e-3 to 8e-3 for every family here
RELATIVE_TOLERANCE = 0.03


def _randomised(network: torch.nn.Module) -> torch.nn.Module:
    """Non-zero values everywhere (zero-initialised adapters would hide their path)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return network.eval()


def _box_logits(network, size: int):
    images = torch.rand(1, 3 if size == 256 else 1, size, size, generator=torch.Generator().manual_seed(1))
    box = torch.tensor([[[size * 0.2, size * 0.3, size * 0.7, size * 0.8]]])
    return network.decode(network.encode(images), boxes=box)[0]


def _msa_logits(network):
    volume = torch.rand(1, 1, 32, 32, 4, generator=torch.Generator().manual_seed(1))
    clicks = torch.zeros_like(volume)
    clicks[0, 0, 15, 12, 1] = 1.0
    return network(volume, clicks)[..., 1]  # the clicked slice (the others are the constant no-click logit)


def _sam3d_logits(network):
    volume = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    return network(volume, torch.tensor([[[8.0, 7.0, 9.0]]]))


FAMILIES = {
    "litemedsam (TinyViT)": (build_lite_medsam, lambda n: _box_logits(n, 256)),
    "samus": (lambda: build_samus(**SAMUS_TINY), lambda n: _box_logits(n, SAMUS_TINY["image_size"])),
    "hq-samus": (lambda: build_samus(hq=True, **SAMUS_TINY), lambda n: _box_logits(n, SAMUS_TINY["image_size"])),
    "samihs": (lambda: build_samihs(**SAMIHS_TINY), lambda n: _box_logits(n, SAMIHS_TINY["image_size"])),
    "msa": (lambda: build_msa(num_slices=4, **MSA_TINY), _msa_logits),
    "3dsam-adapter (3-D encoder)": (lambda: build_sam3d_adapter(**SAM3D_TINY), _sam3d_logits),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bf16_encoder_stays_close_to_float32_and_switches_back(family):
    build, logits_of = FAMILIES[family]
    torch.manual_seed(0)
    network = _randomised(build())
    state = {k: v.clone() for k, v in network.state_dict().items()}
    with torch.no_grad():
        reference = logits_of(network)
        assert set_encoder_precision(network, "bf16") == "bf16"
        low = logits_of(network)
        assert set_encoder_precision(network, "float32") == "float32"
        again = logits_of(network)
    assert low.dtype == torch.float32 and low.shape == reference.shape
    error = ((low - reference).norm() / reference.norm()).item()
    assert 0 < error < RELATIVE_TOLERANCE, f"{family}: relative L2 {error:.2e}"  # > 0: bf16 did run
    torch.testing.assert_close(again, reference, rtol=0, atol=0)
    assert all(torch.equal(v, state[k]) for k, v in network.state_dict().items())


def test_auto_follows_the_device(monkeypatch):
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: False)
    assert resolve_precision("auto", "cpu") == "float32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bf16, got 'fp16'"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="got 'half'"):  # also for a network without an image encoder
        set_encoder_precision(torch.nn.Linear(2, 2), "half")
