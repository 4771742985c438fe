"""tools/random_weights.py: seeded random weights of a bundle's inference network, for trying a pipeline before
training; the README smoke-test commands of every bundle without shipped weights use it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.errors import InvalidInputError
from common.networks.msa import TINY_SIZES, build_msa
from tools.random_weights import random_weights

REPO = Path(__file__).resolve().parents[2]
MSA = REPO / "bundles" / "msa"
TINY = {f"network_def#{key}": value for key, value in TINY_SIZES.items()}


def test_the_same_seed_gives_the_same_weights_and_they_load_strictly(tmp_path):
    a = random_weights(str(MSA), str(tmp_path / "a.pt"), seed=0, roi_size=4, **TINY)
    b = random_weights(str(MSA), str(tmp_path / "b.pt"), seed=0, roi_size=4, **TINY)
    c = random_weights(str(MSA), str(tmp_path / "c.pt"), seed=1, roi_size=4, **TINY)
    state_a, state_b, state_c = (torch.load(p, weights_only=True) for p in (a, b, c))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a)
    net = build_msa(num_slices=4, decoder_adapters=True, **TINY_SIZES)  # the bundle's network: decoder adapters on
    net.load_state_dict(state_a, strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "c.pt"]


def test_refuses_the_models_folder_unknown_keys_and_non_bundles(tmp_path):
    with pytest.raises(InvalidInputError, match="models/ folder"):
        random_weights(str(MSA), str(MSA / "models" / "model.pt"))
    with pytest.raises(InvalidInputError, match="--imagesize: not a key"):
        random_weights(str(MSA), str(tmp_path / "x.pt"), imagesize=256)
    with pytest.raises(InvalidInputError, match="not a bundle folder"):
        random_weights(str(tmp_path), str(tmp_path / "x.pt"))
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("bundle", ["msa", "3dsam_pancreas", "samus_busi", "samihs_ich", "samihs_polyp"])
def test_the_readme_commands_name_the_tool(bundle):
    """Each bundle without shipped weights shows the smoke path in its README and its missing-weights message;
    the message links the authors' release where there is one (SAMIHS publishes no trained weights)."""
    readme = (REPO / "bundles" / bundle / "docs" / "README.md").read_text()
    assert f"python tools/random_weights.py bundles/{bundle} /tmp/" in readme and "Trying it without weights" in readme
    hint = json.loads((REPO / "bundles" / bundle / "configs" / "inference.json").read_text())["weights_hint"]
    assert f"random_weights.py bundles/{bundle} /tmp/" in hint and "--ckpt_path /tmp/" in hint
    assert ("github.com/" in hint) == (not bundle.startswith("samihs"))


def test_the_root_readme_names_the_tool():
    assert "python tools/random_weights.py bundles/<name> /tmp/" in (REPO / "README.md").read_text()


def test_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "random_weights.py"), str(MSA), str(tmp_path / "w.pt"), "--roi_size", "4",
         *[f"--network_def#{k}={v}" for k, v in TINY_SIZES.items() if not isinstance(v, tuple)],
         "--network_def#global_attn_indexes=[1]"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "seeded random weights" in done.stdout and (tmp_path / "w.pt").is_file()
    assert done.stdout.count(str(tmp_path / "w.pt")) == 1  # its own report only, not Fire's echo of the result


def test_the_converter_names_what_it_wrote_once(tmp_path):
    out = tmp_path / "model.pt"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "litemedsam", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(str(out)) == 1 and done.stdout.startswith(f"wrote {out}")
