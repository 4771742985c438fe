"""Every bundle's ``configs/metadata.json`` against the MONAI metadata schema, offline (the schema is vendored in
``tools/schema``; nothing is downloaded), its version and changelog, and its ``large_files.yml``.

verify_net_in_out (with the prompt inputs each network needs) and check_properties of the train and inference
workflows run in each bundle's own test module (``test_<bundle>_bundle.py``, ``test_medsam_train.py``), on real data;
``test_every_bundle_is_checked`` keeps a new bundle from slipping through without them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from monai.bundle import verify_metadata

SCHEMA_NAME = "meta_schema_20240725.json"
BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
METADATA_FILES = sorted(BUNDLES.glob("*/configs/metadata.json"))


def test_every_bundle_is_checked():
    names = {p.parts[-3] for p in METADATA_FILES}
    assert names >= {"medsam", "3dsam_pancreas", "msa"}
    tests = {p.name: p.read_text() for p in Path(__file__).parent.glob("test_*.py")}
    for name in names:
        own = "".join(text for file, text in tests.items() if file.startswith(f"test_{name.split('_')[0]}"))
        verified = "verify_net_in_out(" in own or "verify_clicked_2d_net(" in own  # the latter wraps the former
        assert verified, f"{name}: no verify_net_in_out test"
        assert '"train"' in own and '"infer"' in own and "checked_properties(wf)" in own, (
            f"{name}: check_properties not run for both its train and inference workflows"
        )


@pytest.mark.parametrize("meta_file", METADATA_FILES, ids=[p.parts[-3] for p in METADATA_FILES])
def test_verify_metadata_offline(meta_file, repo_root, tmp_path):
    schema = tmp_path / SCHEMA_NAME
    shutil.copy(repo_root / "tools" / "schema" / SCHEMA_NAME, schema)
    before = schema.read_bytes()
    meta = json.loads(meta_file.read_text())
    assert meta["schema"].endswith(SCHEMA_NAME)
    verify_metadata(meta_file=str(meta_file), filepath=str(schema))
    assert schema.read_bytes() == before  # the existing file was used, nothing downloaded over it

    # the schema really is applied: dropping a required key fails
    del meta["required_packages_version"]
    broken = tmp_path / "metadata_broken.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="required_packages_version"):
        verify_metadata(meta_file=str(broken), filepath=str(schema))


@pytest.mark.parametrize("meta_file", METADATA_FILES, ids=[p.parts[-3] for p in METADATA_FILES])
def test_version_is_in_changelog(meta_file):
    meta = json.loads(meta_file.read_text())
    assert meta["version"] in meta["changelog"]
    assert all(len(v.split(".")) == 3 and all(p.isdigit() for p in v.split(".")) for v in meta["changelog"])


LARGE_FILES = sorted(BUNDLES.glob("*/large_files.yml"))


@pytest.mark.parametrize("listing", LARGE_FILES, ids=[p.parts[-2] for p in LARGE_FILES])
def test_large_files_entries(listing):
    """url + sha256 per entry, paths inside the bundle's models/ (monai.bundle download_large_files format)."""
    entries = yaml.safe_load(listing.read_text())["large_files"]
    assert entries
    for entry in entries:
        assert entry["path"].startswith("models/") and ".." not in entry["path"]
        assert entry["url"].startswith("https://")
        assert entry["hash_type"] == "sha256" and len(entry["hash_val"]) == 64
        int(entry["hash_val"], 16)
