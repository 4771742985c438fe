"""Atomic output files: complete file or nothing, no temporary left behind."""

import pytest

from common.atomic import atomic_path, write_text_atomic


def test_write_text_creates_folder_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "new" / "report.json"
    assert write_text_atomic(out, "{}") == str(out)
    assert out.read_text() == "{}" and sorted(p.name for p in out.parent.iterdir()) == ["report.json"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    out = tmp_path / "model.pt"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(out) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_written_file_is_world_readable(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "x")
    assert target.stat().st_mode & 0o777 == 0o644
