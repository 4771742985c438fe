"""Every bundle's ``configs/metadata.json`` against the MONAI metadata schema, offline (the schema file comes from
``../shared/schema``; nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from monai.bundle import verify_metadata

SCHEMA_NAME = "meta_schema_20240725.json"
BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
METADATA_FILES = sorted(BUNDLES.glob("*/configs/metadata.json"))


def test_every_bundle_is_checked():
    assert {p.parts[-3] for p in METADATA_FILES} >= {"medsam", "3dsam_pancreas", "msa"}


@pytest.mark.parametrize("meta_file", METADATA_FILES, ids=[p.parts[-3] for p in METADATA_FILES])
def test_verify_metadata_offline(meta_file, repo_root, tmp_path):
    schema = tmp_path / SCHEMA_NAME
    shutil.copy(repo_root.parent / "shared" / "schema" / SCHEMA_NAME, schema)
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
