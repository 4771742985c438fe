"""Atomic output files: complete file or nothing, no temporary left behind (also on SIGTERM / SIGHUP)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from common.atomic import atomic_path, is_temporary, write_text_atomic


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
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def _killed_while_writing(folder, before_writing: str = "") -> subprocess.CompletedProcess:
    """A process that signals itself (SIGTERM) half-way through an atomic write of ``folder/out.nii.gz``."""
    code = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from common.atomic import atomic_path
        {before_writing}
        with atomic_path({str(folder / "out.nii.gz")!r}) as tmp:
            open(tmp, "w").write("partial")
            print(os.path.basename(tmp), flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        print("not reached")
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sigterm_while_writing_removes_the_temporary_and_still_ends_the_process(tmp_path):
    (tmp_path / "out.nii.gz").write_text("previous")
    run = _killed_while_writing(tmp_path)
    assert run.returncode == -signal.SIGTERM, run.stderr  # ended by the signal, as without the handler
    temporary = run.stdout.split()[0]
    assert is_temporary(temporary) and temporary.endswith("out.nii.gz") and "not reached" not in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]
    assert (tmp_path / "out.nii.gz").read_text() == "previous"


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sigterm_handler_the_process_had_still_runs(tmp_path):
    own = "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))"
    run = _killed_while_writing(tmp_path, before_writing=own)
    assert run.returncode == 3, run.stderr
    assert list(tmp_path.iterdir()) == []
