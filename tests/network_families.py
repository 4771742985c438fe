"""Small randomly initialised networks of every family, and a function of each giving its logits, for tests that
compare an encoder path (bf16, OpenVINO) with float32 torch."""

from __future__ import annotations

import torch

from common.networks.medsam import build_lite_medsam
from common.networks.msa import TINY_SIZES as MSA_TINY
from common.networks.msa import build_msa
from common.networks.sam3d_adapter import TINY_SIZES as SAM3D_TINY
from common.networks.sam3d_adapter import build_sam3d_adapter
from common.networks.samihs import TINY_SIZES as SAMIHS_TINY
from common.networks.samihs import build_samihs
from common.networks.samus import TINY_SIZES as SAMUS_TINY
from common.networks.samus import build_samus


def randomised(network: torch.nn.Module) -> torch.nn.Module:
    """Non-zero values everywhere (zero-initialised adapters would hide their path)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return network.eval()


def box_logits(network, size: int):
    images = torch.rand(1, 3 if size == 256 else 1, size, size, generator=torch.Generator().manual_seed(1))
    box = torch.tensor([[[size * 0.2, size * 0.3, size * 0.7, size * 0.8]]])
    return network.decode(network.encode(images), boxes=box)[0]


def msa_logits(network):
    volume = torch.rand(1, 1, 32, 32, 4, generator=torch.Generator().manual_seed(1))
    clicks = torch.zeros_like(volume)
    clicks[0, 0, 15, 12, 1] = 1.0
    return network(volume, clicks)[..., 1]  # the clicked slice (the others are the constant no-click logit)


def sam3d_logits(network):
    volume = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    return network(volume, torch.tensor([[[8.0, 7.0, 9.0]]]))


FAMILIES = {
    "litemedsam (TinyViT)": (build_lite_medsam, lambda n: box_logits(n, 256)),
    "samus": (lambda: build_samus(**SAMUS_TINY), lambda n: box_logits(n, SAMUS_TINY["image_size"])),
    "hq-samus": (lambda: build_samus(hq=True, **SAMUS_TINY), lambda n: box_logits(n, SAMUS_TINY["image_size"])),
    "samihs": (lambda: build_samihs(**SAMIHS_TINY), lambda n: box_logits(n, SAMIHS_TINY["image_size"])),
    "msa": (lambda: build_msa(num_slices=4, **MSA_TINY), msa_logits),
    "3dsam-adapter (3-D encoder)": (lambda: build_sam3d_adapter(**SAM3D_TINY), sam3d_logits),
}
