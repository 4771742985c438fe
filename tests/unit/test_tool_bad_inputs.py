"""Bad inputs to ``tools/package_bundle.py`` and ``tools/convert_checkpoint.py``: the project's one-line error (exit
status 1, no traceback, last stderr line ``error: ...`` naming the file or key) and nothing written; valid inputs
still work. The packager runs as a subprocess (it starts fast); the converter imports torch (~10 s a start), so its
cases run its command line in-process (:func:`common.errors.run_cli` on its ``COMMANDS``) and three run as real
subprocesses, side by side."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from common.errors import TRACEBACK_ENV, InvalidInputError, run_cli
from common.networks import medsam
from common.networks.msa import TINY_SIZES as MSA_TINY
from common.networks.msa import build_msa
from common.networks.samus import TINY_SIZES as SAMUS_TINY
from common.networks.samus import build_samus

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import convert_checkpoint  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", TRACEBACK_ENV)}


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root`` (hidden ones too), relative."""
    return {os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files}


def assert_one_line_error(returncode: int, stderr: str, expected: list[str]) -> None:
    assert returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines[-2].startswith("(input error;") and lines[-1].startswith("error: "), stderr
    assert all(text in lines[-1] for text in expected), (expected, lines[-1])


def run_tool(tool: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, f"tools/{tool}", *args]
    return subprocess.run(command, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------------- packager


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A copy of bundles/medsam without weights or run outputs."""
    ignore = shutil.ignore_patterns("models", "eval", "runs", "__pycache__", "*.zip", "*.sha256")
    return Path(shutil.copytree(REPO / "bundles" / "medsam", tmp_path / "medsam", ignore=ignore))


def writes(relative: str, content: str | bytes):
    def breaker(bundle: Path, tmp: Path) -> None:
        path = bundle / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return breaker


def metadata(drop: str | None = None, **changes):
    """Set keys of the bundle's metadata.json (``version=...``); ``drop``: remove that key."""

    def breaker(bundle: Path, tmp: Path) -> None:
        meta_file = bundle / "configs" / "metadata.json"
        meta = json.loads(meta_file.read_text())
        meta.update(changes)
        meta.pop(drop, None)
        meta_file.write_text(json.dumps(meta))

    return breaker


def large_files(entry: str):
    return writes("large_files.yml", f"large_files:\n  - {entry}\n")


def symlink(relative: str, target, kind: str = "file"):
    """``relative`` -> ``target(bundle, tmp)``, created first as ``kind``: a file, a folder holding one, or nothing."""

    def breaker(bundle: Path, tmp: Path) -> None:
        to = target(bundle, tmp)
        if kind == "folder":
            to.mkdir()
            (to / "data.txt").write_text("x")
        elif kind == "file":
            to.write_text("x")
        (bundle / relative).symlink_to(to, target_is_directory=kind == "folder")

    return breaker


def arguments(make_args):
    def breaker(bundle: Path, tmp: Path) -> list[str]:
        return [str(a) for a in make_args(bundle, tmp)]

    return breaker


def remove(relative: str):
    return lambda bundle, tmp: (bundle / relative).unlink()


def rename_bundle(name: str):
    return arguments(lambda bundle, tmp: [bundle.rename(tmp / name), tmp / "dist"])


def huge_file(bundle: Path, tmp: Path) -> None:
    with open(bundle / "docs" / "weights.bin", "wb") as handle:
        handle.truncate(26 * 2**20)  # sparse


PACKAGER_CASES = [
    pytest.param(arguments(lambda b, t: [t / "nope", t / "dist"]), ["nope not found"], id="missing"),
    pytest.param(arguments(lambda b, t: [b / "LICENSE", t / "dist"]), ["LICENSE is a file"], id="file"),
    pytest.param(remove("configs/metadata.json"), ["not a bundle", "configs/metadata.json"], id="no-metadata"),
    pytest.param(rename_bundle("med sam"), ["'med sam'", "letters, digits"], id="bad-name"),
    pytest.param(writes("configs/inference.json", '{"a": 1,\n}'), ["inference.json", "line 2, column 1"], id="json"),
    pytest.param(writes("configs/metadata.json", "{"), ["metadata.json", "not valid JSON"], id="json-metadata"),
    pytest.param(writes("configs/extra/x.json", "[1 2]"), ["x.json", "line 1, column 4"], id="json-nested"),
    pytest.param(writes("configs/train.json", b'{"\xff": 1}'), ["train.json", "not UTF-8"], id="json-not-utf8"),
    pytest.param(writes("configs/metadata.json", "[]"), ["metadata.json", "no 'version'"], id="metadata-list"),
    pytest.param(metadata(drop="version"), ["metadata.json", "no 'version'"], id="version-missing"),
    pytest.param(metadata(version="../../x"), ["metadata.json", "'../../x'"], id="version-traversal"),
    pytest.param(metadata(version=""), ["metadata.json", "got ''"], id="version-empty"),
    pytest.param(metadata(version="1.0/2"), ["metadata.json", "'1.0/2'"], id="version-slash"),
    pytest.param(metadata(version="1.0\\2"), ["metadata.json", "'version'"], id="version-backslash"),
    pytest.param(metadata(version=1.0), ["metadata.json", "got 1.0"], id="version-number"),
    pytest.param(writes("large_files.yml", "large_files: [\n  - path: a\n"), ["large_files.yml", "YAML"], id="yml"),
    pytest.param(writes("large_files.yml", "large_files: models/model.pt\n"), ["large_files.yml"], id="yml-no-list"),
    pytest.param(writes("large_files.yml", "- path: x\n"), ["large_files.yml", "'large_files'"], id="yml-top-list"),
    pytest.param(large_files("models/model.pt"), ["large_files[0] is a str"], id="yml-entry-str"),
    pytest.param(large_files("{path: m.pt, hash_val: ab}"), ["large_files[0]", "'url'"], id="yml-no-url"),
    pytest.param(large_files("{path: m.pt, url: u}"), ["large_files[0]", "'hash_val'"], id="yml-no-hash"),
    pytest.param(large_files("{path: m.pt, url: u, hash_val: a, hash_type: crc}"), ["'crc'"], id="yml-hash-type"),
    pytest.param(large_files("{path: ../m.pt, url: u, hash_val: a}"), ["'../m.pt'", "outside"], id="yml-dotdot"),
    pytest.param(large_files("{path: /etc/m.pt, url: u, hash_val: a}"), ["'/etc/m.pt'", "outside"], id="yml-abs"),
    pytest.param(symlink("docs/link.txt", lambda b, t: t / "out.txt"), ["link.txt", "outside"], id="link-file-out"),
    pytest.param(symlink("docs/ext", lambda b, t: t / "ext", "folder"), ["docs/ext", "outside"], id="link-folder-out"),
    pytest.param(symlink("docs/in", lambda b, t: b / "in", "folder"), ["docs/in", "a folder"], id="link-folder-in"),
    pytest.param(symlink("docs/gone", lambda b, t: b / "missing", "none"), ["docs/gone", "nothing"], id="link-broken"),
    pytest.param(arguments(lambda b, t: [b, b / "dist"]), ["medsam/dist is inside", "bundle folder"], id="out-inside"),
    pytest.param(arguments(lambda b, t: [b, b]), ["is inside the bundle folder"], id="out-is-bundle"),
    pytest.param(arguments(lambda b, t: [b, b / "LICENSE"]), ["LICENSE is inside"], id="out-file-inside"),
    pytest.param(writes("docs/medsam_v0.1.0.zip", "PK"), ["medsam_v0.1.0.zip", "package of this"], id="old-zip"),
    pytest.param(huge_file, ["weights.bin is over 25 MB", "large_files.yml"], id="unlisted-large-file"),
]


@pytest.mark.parametrize("breaker, expected", PACKAGER_CASES)
def test_packager_refuses_bad_input(bundle, tmp_path, breaker, expected):
    args = breaker(bundle, tmp_path) or [str(bundle), str(tmp_path / "dist")]
    before = tree(tmp_path)
    done = run_tool("package_bundle.py", *args)
    assert_one_line_error(done.returncode, done.stderr, expected)
    assert tree(tmp_path) == before


def test_packager_refuses_an_output_folder_that_is_a_file(bundle, tmp_path):
    (tmp_path / "dist").write_text("")
    done = run_tool("package_bundle.py", str(bundle), str(tmp_path / "dist"))
    assert_one_line_error(done.returncode, done.stderr, ["dist is a file"])


def test_packager_packs_a_valid_copy(bundle, tmp_path):
    """Listed weights (here a symlink out of the bundle) and the OpenVINO encoders converted on this machine are left
    out; a symlink to a file inside is its bytes."""
    (tmp_path / "weights.pt").write_bytes(b"w")
    (bundle / "models" / "openvino").mkdir(parents=True)
    (bundle / "models" / "model.pt").symlink_to(tmp_path / "weights.pt")
    (bundle / "models" / "openvino" / "TinyViT-0123456789abcdef-1x3x256x256.bin").write_bytes(b"\0" * 100)
    (bundle / "docs" / "LICENSE").symlink_to(bundle / "LICENSE")
    (bundle / "models" / ".tmp_k2j4model.pt").write_bytes(b"\x80partial")  # what a kill -9 while saving leaves
    (bundle / "docs" / ".tmp_x1y2README.md").write_text("half")
    with open(bundle / "models" / "model_previous.pt", "wb") as handle:  # served weights MONAI Label replaced
        handle.truncate(30 * 2**20)
    done = run_tool("package_bundle.py", str(bundle), str(tmp_path / "dist"))
    assert done.returncode == 0, done.stderr
    assert (
        "not packed: docs/.tmp_x1y2README.md" in done.stdout and "not packed: models/model_previous.pt" in done.stdout
    )
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert sorted(tree(tmp_path / "dist")) == [f"medsam_v{version}.zip", f"medsam_v{version}.zip.sha256"]
    with zipfile.ZipFile(tmp_path / "dist" / f"medsam_v{version}.zip") as archive:
        assert archive.read("medsam/docs/LICENSE") == (bundle / "LICENSE").read_bytes()
        assert not any(n.startswith("medsam/models/") or "/.tmp_" in n for n in archive.namelist())
        packed = json.loads(archive.read("medsam/configs/metadata.json"))
    # the vendored code imports openvino only for encoder_backend "openvino": optional, never required
    assert "openvino" not in packed["required_packages_version"]
    if importlib.util.find_spec("openvino") is not None:
        assert packed["optional_packages_version"]["openvino"] == importlib.metadata.version("openvino")


def test_packager_traceback_on_request_and_usage_errors(bundle, tmp_path):
    done = run_tool("package_bundle.py", str(tmp_path / "nope"), env={**ENV, TRACEBACK_ENV: "1"})
    assert done.returncode == 1 and "Traceback" in done.stderr and "InputNotFoundError" in done.stderr
    done = run_tool("package_bundle.py")  # Fire's usage error: no bundle given
    assert done.returncode == 2 and "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------------------- run_cli


def test_run_cli_reports_wrapped_input_errors_in_two_lines(monkeypatch, capsys):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)

    def wrapped():
        try:
            raise InvalidInputError("box.json: first line\n  second line")
        except InvalidInputError as e:
            raise RuntimeError("while loading") from e

    monkeypatch.setattr(sys, "argv", ["tool"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(wrapped)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1] == "error: InvalidInputError: box.json: first line; second line"
    with pytest.raises(KeyError):  # other errors keep their traceback
        run_cli(lambda: {}["x"])


# ----------------------------------------------------------------------------------------------------- converter


class Instance:
    """A pickled object of a class: weights-only loading must refuse it."""

    def __init__(self):
        self.value = 1


class RunsCode:
    """Unpickling it (without weights_only) would create the folder ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def flags(sizes: dict) -> list[str]:
    return [f"--{k}={list(v) if isinstance(v, (list, tuple)) else v}".replace(" ", "") for k, v in sizes.items()]


SAMUS = ["samus", "{src}", "{out}", *flags(SAMUS_TINY)]
MSA_SIZES = {k: v for k, v in MSA_TINY.items() if k != "image_size"}
MSA = ["msa", "{src}", "{out}", "--num_slices=4", "--image_size=64", *flags(MSA_SIZES)]


@pytest.fixture(scope="module")
def samus_state() -> dict[str, torch.Tensor]:
    return build_samus(**SAMUS_TINY).state_dict()


@pytest.fixture(scope="module")
def msa_state() -> dict[str, torch.Tensor]:
    return build_msa(num_slices=4, **MSA_TINY).state_dict()


def raw(data: bytes):
    return lambda path, state: path.write_bytes(data)


def saved(transform=lambda state: state):
    return lambda path, state: torch.save(transform(state), path)


def truncated(path: Path, state) -> None:
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def renamed_key(state: dict) -> dict:
    first = next(iter(state))
    return {("image_encoder.bogus_key" if k == first else k): v for k, v in state.items()}


def reshaped(key: str):
    return lambda state: {k: (torch.zeros(3, 3) if k == key else v) for k, v in state.items()}


def with_nan(state: dict) -> dict:
    key = "image_encoder.patch_embed.proj.weight"
    return {k: (torch.full_like(v, float("nan")) if k == key else v) for k, v in state.items()}


def ddp(state: dict) -> dict:
    return {f"module.{k}": v for k, v in state.items()}


MEDSAM = ["medsam", "{src}", "{out}"]
# (command with {src}/{out}/{tmp}/{tmp_name}, writer of {src} (None: no file), texts the error line must hold)
CONVERTER_CASES = [
    pytest.param(MEDSAM, None, ["src.pth not found", "medsam_vit_b.pth"], id="missing"),
    pytest.param(["medsam", "{tmp}", "{out}"], None, ["is a folder, not a checkpoint"], id="source-folder"),
    pytest.param(["litemedsam", "{out}", "--source={src}"], None, ["src.pth not found"], id="missing-lite"),
    pytest.param(["sam3d_published", "{src}", "{out}"], None, ["src.pth not found"], id="missing-sam3d"),
    pytest.param(SAMUS, raw(b""), ["src.pth", "not a PyTorch checkpoint, or a damaged one"], id="empty"),
    pytest.param(SAMUS, raw(b"hello weights\n"), ["src.pth", "not a PyTorch checkpoint, or a damaged one"], id="text"),
    pytest.param(
        SAMUS, truncated, ["src.pth", "not a PyTorch checkpoint, or a damaged one", "zip archive"], id="truncated"
    ),
    pytest.param(
        SAMUS, saved(lambda s: {**s, "x": Instance()}), ["src.pth", "loading it would run code"], id="class-instance"
    ),
    pytest.param(SAMUS, saved(lambda s: [*s.values()]), ["src.pth", "found list"], id="not-a-dict"),
    pytest.param(SAMUS, saved(lambda s: {"epoch": 3}), ["src.pth", "not a state dict", "epoch"], id="no-state-dict"),
    pytest.param(SAMUS, saved(renamed_key), ["src.pth does not fit", "image_encoder.bogus_key"], id="wrong-keys"),
    pytest.param(MSA, saved(reshaped("mask_decoder.iou_token.weight")), ["src.pth", "iou_token"], id="wrong-shape"),
    pytest.param(SAMUS, saved(with_nan), ["src.pth", "image_encoder.patch_embed.proj.weight"], id="nan-weights"),
    pytest.param(MEDSAM, saved(lambda s: {"w": torch.zeros(1)}), ["src.pth", "unexpected key(s): w"], id="medsam-keys"),
    pytest.param(["sam3d_published", "{src}", "{out}"], saved(), ["src.pth", "encoder_dict"], id="sam3d-layout"),
    pytest.param(
        ["sam3d_published", "{src}", "{out}"],
        saved(lambda s: {"encoder_dict": [1], "decoder_dict": {}}),
        ["src.pth", "not a released 3DSAM-adapter checkpoint"],
        id="sam3d-entry-kind",
    ),
    pytest.param(["medsam", "{src}", "{tmp}"], saved(), ["is a folder; give the file"], id="out-folder"),
    pytest.param(["medsam", "{src}", "{src}"], saved(), ["would overwrite it"], id="out-is-source"),
    pytest.param(["medsam", "{src}", "{tmp}/../{tmp_name}/src.pth"], saved(), ["overwrite"], id="out-is-source-2"),
    pytest.param(["medsam", "{src}", "{src}/model.pt"], saved(), ["src.pth is a file"], id="out-parent-file"),
    pytest.param([*MSA, "--num_slices=0"], saved(), ["--num_slices", "got 0"], id="num-slices-0"),
    pytest.param([*MSA, "--num_slices=-1"], saved(), ["--num_slices", "got -1"], id="num-slices-negative"),
    pytest.param([*MSA, "--num_slices=abc"], saved(), ["--num_slices", "'abc'"], id="num-slices-text"),
    pytest.param(["msa", "{src}", "{out}", "--image_size=1000"], saved(), ["1000", "patch size 16"], id="size"),
    pytest.param([*MSA, "--image_size=0"], saved(), ["--image_size", "got 0"], id="image-size-0"),
    pytest.param([*SAMUS, "--bogus_size=3"], saved(), ["build_samus", "bogus_size"], id="unknown-size"),
]


def fill(args: list[str], tmp: Path) -> list[str]:
    values = dict(src=tmp / "src.pth", out=tmp / "out" / "model.pt", tmp=tmp, tmp_name=tmp.name)
    return [a.format(**values) for a in args]


def run_converter_in_process(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["convert_checkpoint.py", *args])
    try:
        run_cli(convert_checkpoint.COMMANDS)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, make, expected", CONVERTER_CASES)
def test_converter_refuses_bad_input(tmp_path, monkeypatch, capsys, samus_state, msa_state, args, make, expected):
    if make is not None:
        make(tmp_path / "src.pth", msa_state if args[0] == "msa" else samus_state)
    before = tree(tmp_path)
    code, stderr = run_converter_in_process(fill(args, tmp_path), monkeypatch, capsys)
    assert_one_line_error(code, stderr, expected)
    assert tree(tmp_path) == before


def test_converter_never_runs_pickled_code(tmp_path, monkeypatch, capsys, samus_state):
    torch.save({**samus_state, "hook": RunsCode(tmp_path / "ran")}, tmp_path / "src.pth")
    code, stderr = run_converter_in_process(fill(SAMUS, tmp_path), monkeypatch, capsys)
    assert_one_line_error(code, stderr, ["src.pth", "loading it would run code"])
    assert sorted(tree(tmp_path)) == ["src.pth"]


def test_converter_accepts_ddp_prefixes(tmp_path, monkeypatch, capsys, msa_state):
    """A ``module.``-prefixed training checkpoint converts into a plain state dict, in a folder it creates."""
    torch.save({"epoch": 1, "state_dict": ddp(msa_state)}, tmp_path / "src.pth")
    code, stderr = run_converter_in_process(fill(MSA, tmp_path), monkeypatch, capsys)
    assert code == 0, stderr
    converted = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert converted.keys() == msa_state.keys() and sorted(tree(tmp_path)) == ["out", "out/model.pt", "src.pth"]


def test_litemedsam_copies_plain_files_and_rewrites_prefixed_ones(tmp_path, monkeypatch, capsys):
    state = medsam.build_lite_medsam().state_dict()
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"model": ddp(state)}, tmp_path / "ddp.pth")
    for name in ("plain", "ddp"):
        code, stderr = run_converter_in_process(
            ["litemedsam", str(tmp_path / f"{name}.pt"), f"--source={tmp_path / name}.pth"], monkeypatch, capsys
        )
        assert code == 0, stderr
    assert (tmp_path / "plain.pt").read_bytes() == (tmp_path / "plain.pth").read_bytes()
    assert list(torch.load(tmp_path / "ddp.pt", weights_only=True)) == list(state)


# the real command line, three processes side by side: a DDP checkpoint converts, a truncated one and a bad option fail
SUBPROCESS_CASES = {
    "ddp": (SAMUS, saved(ddp), None),
    "truncated": (SAMUS, truncated, ["src.pth", "not a PyTorch checkpoint, or a damaged one"]),
    "num-slices-0": ([*MSA, "--num_slices=0"], saved(), ["--num_slices", "got 0"]),
}


@pytest.fixture(scope="module")
def converter_processes(tmp_path_factory, samus_state, msa_state):
    """{case: (exit status, stderr, its folder, its files before)} for :data:`SUBPROCESS_CASES`, run concurrently."""
    started = {}
    for case, (args, make, _) in SUBPROCESS_CASES.items():
        tmp = tmp_path_factory.mktemp(case)
        make(tmp / "src.pth", msa_state if args[0] == "msa" else samus_state)
        command = [sys.executable, "tools/convert_checkpoint.py", *fill(args, tmp)]
        process = subprocess.Popen(
            command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started[case] = (process, tmp, tree(tmp))
    done = {}
    for case, (process, tmp, before) in started.items():
        _, stderr = process.communicate(timeout=300)
        done[case] = (process.returncode, stderr, tmp, before)
    return done


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_converter_command_line(converter_processes, samus_state, case):
    returncode, stderr, tmp, before = converter_processes[case]
    expected = SUBPROCESS_CASES[case][2]
    if expected is None:
        assert returncode == 0 and "Traceback" not in stderr, stderr
        assert torch.load(tmp / "out" / "model.pt", weights_only=True).keys() == samus_state.keys()
    else:
        assert_one_line_error(returncode, stderr, expected)
        assert tree(tmp) == before
