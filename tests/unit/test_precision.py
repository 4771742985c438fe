"""bf16 encoder inference (``common.networks.precision``): resolved per device, switched both ways, weights and
state dict untouched, and every network family's outputs within a stated tolerance of float32 (random weights;
the real-data guard for MedSAM is ``tests/real/test_bf16_masks.py``)."""

from __future__ import annotations

import pytest
import torch
from network_families import FAMILIES, randomised

from common.networks import precision as precision_module
from common.networks.precision import resolve_precision, set_encoder_precision

# relative L2 error of the logits, bf16 encoder vs float32; measured 4e-3 to 8e-3 for every family here
RELATIVE_TOLERANCE = 0.03


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bf16_encoder_stays_close_to_float32_and_switches_back(family):
    build, logits_of = FAMILIES[family]
    torch.manual_seed(0)
    network = randomised(build())
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
