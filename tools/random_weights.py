"""Seeded random weights for a bundle's own network, to see its pipeline and output geometry work before training.

Usage:
    python tools/random_weights.py bundles/3dsam_pancreas /tmp/3dsam_random.pt
    python tools/random_weights.py bundles/msa /tmp/msa_random.pt --image_size 256 --roi_size 16
    python -m monai.bundle run --config_file bundles/msa/configs/inference.json --ckpt_path /tmp/msa_random.pt \
        --image_size 256 --roi_size 16 --input_dict "{'image': 'ct.nii.gz', 'points': [[x, y, z]]}" --output_dir out

The network is the one ``configs/inference.json`` builds (``network_def``), with the given ``--key value`` overrides
(give inference the same ones), initialised by ``torch.manual_seed(seed)``; the state dict is written atomically and
checked to load strictly. The masks it gives are meaningless: it only shows that reading, preprocessing, prompts,
inference and writing work on your data, on your machine. Never put the file in ``models/``.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.atomic import atomic_path  # noqa: E402
from common.errors import InvalidInputError, run_cli  # noqa: E402


def random_weights(bundle: str, out: str, seed: int = 0, **overrides) -> str:
    """Write seeded random weights of ``bundle``'s inference network (``overrides``: config keys) to ``out``."""
    from monai.bundle import ConfigParser

    config = os.path.join(bundle, "configs", "inference.json")
    if not os.path.isfile(config):
        raise InvalidInputError(f"{bundle}: not a bundle folder (no configs/inference.json)")
    if os.path.abspath(os.path.dirname(out)) == os.path.abspath(os.path.join(bundle, "models")):
        raise InvalidInputError(
            f"{out}: random weights never go into the bundle's models/ folder; write them elsewhere"
        )
    parser = ConfigParser()
    parser.read_config(config)
    for key, value in overrides.items():
        if key.rsplit("#", 1)[0] not in parser:  # a key, or a new entry of a key's dict (network_def#depth)
            raise InvalidInputError(f"--{key}: not a key of {config}")
        parser[key] = value
    parser["bundle_root"] = os.path.abspath(bundle)
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    state = network.state_dict()
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    network.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
    print(f"{out}: seeded random weights ({sum(v.numel() for v in state.values()):,} values) for {config}")
    return out


if __name__ == "__main__":
    run_cli(random_weights, print_result=False)  # it prints what it wrote
