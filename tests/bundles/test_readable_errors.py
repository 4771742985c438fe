"""``python -m monai.bundle run`` on bad input: non-zero exit, no traceback, the root cause on the last line
(common.errors); ``SAM_BUNDLES_TRACEBACK=1`` brings the tracebacks back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import (
    InputNotFoundError,
    InvalidInputError,
    error_chain,
    input_error,
    readable_errors,
    readable_errors_installed,
)


def bundle_run(repo_root: Path, config: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *args]
    return subprocess.run(
        command,
        cwd=str(repo_root),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})},
    )


def output_lines(result: subprocess.CompletedProcess) -> list[str]:
    return (result.stdout + result.stderr).strip().splitlines()


CASES = {
    "missing image": (
        "{'image': '/no/such/ct.nii.gz', 'boxes': [[72, 0, 109, 28]], 'box_labels': [1]}",
        ("--ckpt_path", "@weights"),
        "error: InputNotFoundError: 'image': input not found: /no/such/ct.nii.gz",
    ),
    "inverted box": (
        "{'image': '@', 'boxes': [[109, 28, 72, 0]], 'box_labels': [1]}",
        ("--ckpt_path", "@weights"),
        "error: InvalidInputError: 'boxes' for ",
    ),
    "missing weights": (
        "{'image': '@', 'boxes': [[72, 0, 109, 28]], 'box_labels': [1]}",
        ("--ckpt_path", "/no/such/model.pt"),
        "error: InputNotFoundError: model weights not found: /no/such/model.pt.",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_input_errors_end_in_one_readable_line(repo_root, weights, tmp_path, case):
    from common.data.examples import ct_small_dicom

    input_dict, extra, expected = CASES[case]
    out = tmp_path / "out"
    result = bundle_run(
        repo_root,
        "bundles/medsam/configs/inference.json",
        "--input_dict",
        input_dict.replace("'@'", repr(ct_small_dicom())),
        "--output_dir",
        str(out),
        *(str(weights) if arg == "@weights" else arg for arg in extra),
    )
    lines = output_lines(result)
    text = "\n".join(lines)
    assert result.returncode != 0
    assert lines[-1].startswith(expected), text
    if case == "inverted box":
        assert lines[-1].endswith("box #0 [109, 28, 0, 72, 0, 0] is inverted (need x0<=x1, y0<=y1, z0<=z1)."), text
    message = lines[-1].split(": ", 2)[2]
    assert text.count(message) == 1, text  # reported once: no log line repeats it
    assert "Traceback" not in text and " - ERROR - " not in text, text
    assert len(lines) <= 30, text  # start-up log (config warning, input summary) plus the two error lines
    assert not out.exists() or not any(out.iterdir())


def test_full_traceback_on_request(repo_root, weights, tmp_path):
    result = bundle_run(
        repo_root,
        "bundles/medsam/configs/inference.json",
        "--input_dict",
        "{'image': '/no/such/ct.nii.gz', 'boxes': [[72, 0, 109, 28]], 'box_labels': [1]}",
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(weights),
        env={"SAM_BUNDLES_TRACEBACK": "1"},
    )
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" in text and "InputNotFoundError: 'image': input not found: /no/such/ct.nii.gz" in text


def test_other_errors_keep_the_traceback_and_end_in_the_root_cause(repo_root, weights, tmp_path):
    """Not an input error (a network built for 128 px given 256 px slices): the traceback stays, and the root cause
    is repeated as the last line."""
    result = bundle_run(
        repo_root,
        "bundles/medsam/configs/inference.json",
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(weights),
        "--image_size",
        "128",
    )
    lines = output_lines(result)
    assert result.returncode == 1
    assert "Traceback (most recent call last):" in lines
    assert lines[-1].startswith("error: ValueError: TinyViT expects input of shape (B, 3, 256, 256)"), lines[-1]


def test_readable_errors_only_in_the_bundle_cli():
    """In any other program (here pytest) the hook is not installed: tests and servers keep their own handling."""
    assert readable_errors() is False and not readable_errors_installed()


def test_input_error_found_through_wrapping():
    try:
        try:
            raise InvalidInputError("'boxes': bad")
        except ValueError as e:
            raise RuntimeError("applying transform") from e
    except RuntimeError as wrapped:
        assert isinstance(input_error(wrapped), InvalidInputError)
        assert [type(e) for e in error_chain(wrapped)] == [RuntimeError, InvalidInputError]
    assert input_error(RuntimeError("x")) is None
    assert issubclass(InputNotFoundError, FileNotFoundError) and issubclass(InvalidInputError, ValueError)
