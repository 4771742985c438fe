"""Package a bundle as a model-zoo style zip that runs where this repository is not installed.

    python tools/package_bundle.py bundles/medsam dist/
    -> dist/medsam_v0.1.0.zip and dist/medsam_v0.1.0.zip.sha256

The zip holds one top-level folder ``<name>/`` (as ``monai.bundle.download`` expects) with the bundle's files
and, vendored beside ``configs/``, the modules of ``common`` its configs import (the import closure, found
from the configs' ``common.*`` references and the modules' own imports) as a package of the bundle's own,
``sam_bundles_<name>`` (:func:`vendored_package`): every ``common.`` reference in the vendored code and the
configs is rewritten to it, so several packaged bundles load in one interpreter (MONAI Label's stock app, a
notebook) without one bundle's copy of ``common`` shadowing another's. Run from inside the unpacked folder,
``python -m monai.bundle run --config_file configs/inference.json`` then imports the package from there. The
model-zoo style unit tests ``tests/model_zoo/test_<name>.py`` go in as ``ci/unit_tests/test_<name>.py``, with their
shared ``sam_bundles_zoo.py`` beside them (copy both into model-zoo's ``ci/unit_tests/``). The packaged
``metadata.json`` replaces the dependency on this project's package by the third-party packages the vendored code
imports, at the versions installed here (``tools/check_pins.py`` checks that they install on Python 3.10-3.12).
Weights listed in ``large_files.yml`` are left out (``python -m monai.bundle download_large_files --bundle_path
<name>`` fetches them), as are run outputs; any other file over 25 MB is an error.
The archive is deterministic: sorted entries, fixed timestamps and permissions.

Bad input is refused with the project's :class:`~common.errors.InputNotFoundError` / ``InvalidInputError`` (one
line from the command line) before anything is written: no bundle folder or ``configs/metadata.json``, a folder name
other than letters, digits, ``_`` and ``-``, a ``configs/`` JSON file that does not parse, a ``version`` that is not
a plain version string, a ``large_files.yml`` that is not MONAI's layout or lists a path outside the bundle, an
output folder inside the bundle, a previous ``<name>_v*.zip`` inside the bundle, and symlinks that point outside the
bundle, to a folder, or nowhere. A symlink to a file inside the bundle is packed as that file's bytes; symlinked
folders are never followed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path, PurePosixPath, PureWindowsPath

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.atomic import atomic_path, is_temporary, write_text_atomic  # noqa: E402
from common.engines.checkpoints import PREVIOUS_WEIGHTS  # noqa: E402
from common.errors import InputNotFoundError, InvalidInputError, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGE = "sam-medical-bundles"
ZIP_TIME = (2022, 5, 30, 0, 0, 0)  # model-zoo's fixed stamp (ci/update_model_info.py touches 202205300000)
SKIPPED_DIRS = {"eval", "runs", "__pycache__", ".pytest_cache"}
# converted at first use on the user's machine, for its weights (common.networks.openvino_encoder): never shipped
SKIPPED_RELATIVE_DIRS = {"models/openvino"}
MAX_PACKED_BYTES = 25 * 2**20  # model-zoo rule: larger files go to large_files.yml
# import name -> distribution name, for what `common` imports (monai, torch and numpy have their own metadata keys)
DISTRIBUTIONS = {
    "nibabel": "nibabel",
    "itk": "itk",
    "ignite": "pytorch-ignite",
    "scipy": "scipy",
    "SimpleITK": "SimpleITK",
    "pydicom": "pydicom",
    "tqdm": "tqdm",
    "fire": "fire",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "av": "av",
}
# imported only where a user asks for them (``encoder_backend`` "openvino"): listed as optional packages
OPTIONAL_DISTRIBUTIONS = {"openvino": "openvino"}
CORE = {"monai", "torch", "numpy", "common"}
#: A bundle folder name: it names the zip, its top folder and (``_`` for ``-``) the vendored package.
BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
#: A metadata ``version``: it goes into the zip's file name, so no separators or ``..``.
VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]*")
#: ``hash_type`` values ``monai.bundle download_large_files`` checks (``monai.apps.utils.SUPPORTED_HASH_TYPES``).
HASH_TYPES = ("md5", "sha1", "sha256", "sha512")


def _module_file(module: str) -> Path | None:
    path = REPO / Path(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _imports(file: Path, module: str) -> set[str]:
    """Absolute names of every module ``file`` (module ``module``) imports."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


#: ``common`` as a dotted name of its own (not ``.common``, ``foo_common`` or prose such as "in common.")
_COMMON_NAME = re.compile(r"(?<![\w.])common(?=\.[A-Za-z_]|\s+import\b|$)", re.MULTILINE)


def vendored_package(name: str) -> str:
    """The package name the bundle ``name``'s copy of ``common`` gets inside its zip (an identifier)."""
    return "sam_bundles_" + re.sub(r"\W", "_", name)


def rewrite_common(text: str, package: str) -> str:
    """``text`` (Python source or a config) with every reference to the package ``common`` renamed ``package``."""
    return _COMMON_NAME.sub(package, text)


def config_modules_in(text: str) -> set[str]:
    """``common.*`` dotted names in a config's text (imports, ``_target_``s, expressions)."""
    return set(re.findall(r"\bcommon(?:\.[A-Za-z_]\w*)+", text))


def config_modules(bundle: Path) -> set[str]:
    """``common.*`` names referenced anywhere in the bundle's configs."""
    found = set()
    for config in sorted((bundle / "configs").glob("*.json")):
        found.update(config_modules_in(config.read_text()))
    return found


def import_closure(roots: set[str]) -> tuple[list[Path], set[str]]:
    """(files of ``common`` to vendor, top-level third-party modules they import) for the ``roots`` names."""
    files: dict[str, Path] = {}
    third_party: set[str] = set()
    stack = sorted(roots)
    while stack:
        name = stack.pop()
        parts = name.split(".")
        # a name may be `module.attribute`: include every package on the way and the longest module prefix
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            file = _module_file(module)
            if file is None or module in files:
                continue
            files[module] = file
            for imported in _imports(file, module):
                top = imported.split(".")[0]
                if top == "common":
                    stack.append(imported)
                elif top in DISTRIBUTIONS or top in OPTIONAL_DISTRIBUTIONS or top in CORE:
                    third_party.add(top)
                elif top not in sys.stdlib_module_names:
                    raise ValueError(f"{file} imports '{top}', which has no distribution name in DISTRIBUTIONS")
    return sorted(files.values()), third_party - CORE


def load_json(file: Path):
    """The parsed JSON ``file``; a file that does not parse is an :class:`InvalidInputError` naming it."""
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"{file}: not UTF-8 text ({e}); save it as UTF-8 JSON") from e
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"{file}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix it") from e


def bundle_version(bundle: Path) -> str:
    """``version`` of the bundle's ``configs/metadata.json``, checked to be a plain version string."""
    meta_file = bundle / "configs" / "metadata.json"
    meta = load_json(meta_file)
    if not isinstance(meta, dict) or "version" not in meta:
        raise InvalidInputError(f'{meta_file}: no \'version\' key; add one such as "version": "0.1.0"')
    version = meta["version"]
    if not isinstance(version, str) or not VERSION.fullmatch(version):
        raise InvalidInputError(
            f"{meta_file}: 'version' must be a plain version string such as \"0.1.0\" (letters, digits, '.', '+', "
            f"'_', '-'; it names the zip), got {version!r}"
        )
    return version


def _bad_large_file_path(path: str) -> bool:
    posix = PurePosixPath(path)
    return posix.is_absolute() or ".." in posix.parts or "\\" in path or bool(PureWindowsPath(path).drive)


def large_file_paths(bundle: Path) -> set[str]:
    """Bundle-relative paths listed in ``large_files.yml``, which must be MONAI's layout (``large_files:``, a list
    of mappings with ``path``, ``url`` and ``hash_val``) and list paths inside the bundle."""
    listing = bundle / "large_files.yml"
    if not listing.is_file():
        return set()
    try:
        data = yaml.safe_load(listing.read_bytes())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise InvalidInputError(f"{listing}: not valid YAML ({where}{getattr(e, 'problem', None) or e})") from e
    layout = "a 'large_files:' list of entries with 'path', 'url' and 'hash_val'"
    entries = data.get("large_files") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InvalidInputError(f"{listing}: expected {layout}, found no 'large_files' list")
    paths = set()
    for i, entry in enumerate(entries):
        where = f"{listing}: large_files[{i}]"
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{where} is a {type(entry).__name__}; expected {layout}")
        for key in ("path", "url", "hash_val"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise InvalidInputError(f"{where} has no '{key}' string; expected {layout}")
        if str(entry.get("hash_type") or "sha256").lower() not in HASH_TYPES:
            raise InvalidInputError(f"{where}: hash_type {entry['hash_type']!r} is not one of {', '.join(HASH_TYPES)}")
        if _bad_large_file_path(entry["path"]):
            raise InvalidInputError(
                f"{where}: path {entry['path']!r} is outside the bundle; give a path relative to the bundle folder"
            )
        paths.add(PurePosixPath(entry["path"]).as_posix())
    return paths


def packaged_metadata(bundle: Path, third_party: set[str]) -> str:
    """The bundle's metadata with the project package replaced by the vendored code's third-party imports, plus
    what the CLI needs: fire for ``python -m monai.bundle``, pyyaml for ``download_large_files``; optional imports
    (:data:`OPTIONAL_DISTRIBUTIONS`) go to ``optional_packages_version`` at the version installed here."""
    meta = load_json(bundle / "configs" / "metadata.json")
    required = {k: v for k, v in meta.get("required_packages_version", {}).items() if k != PROJECT_PACKAGE}
    optional = dict(meta.get("optional_packages_version", {}))
    cli = {"fire"} | ({"yaml"} if (bundle / "large_files.yml").is_file() else set())
    for module in sorted(third_party | cli):
        if module in OPTIONAL_DISTRIBUTIONS:
            name = OPTIONAL_DISTRIBUTIONS[module]
            try:
                optional.setdefault(name, importlib_metadata.version(name))
            except importlib_metadata.PackageNotFoundError:
                continue  # not installed here: no version to state
        else:
            name = DISTRIBUTIONS[module]
            required.setdefault(name, importlib_metadata.version(name))
    meta["required_packages_version"] = dict(sorted(required.items()))
    if optional:
        meta["optional_packages_version"] = dict(sorted(optional.items()))
    return json.dumps(meta, indent=4) + "\n"


def _check_symlink(link: Path, bundle: Path) -> None:
    """Refuse a symlink unless it resolves to a file inside ``bundle`` (packed as that file's bytes)."""
    target = Path(os.path.realpath(link))
    if not target.is_relative_to(bundle):
        raise InvalidInputError(
            f"{link} is a symlink to {target}, outside the bundle {bundle}: copy the file into the bundle, or list it "
            "in large_files.yml"
        )
    if not target.is_file():
        kind = "a folder (symlinked folders are not packed)" if target.is_dir() else "nothing"
        raise InvalidInputError(f"{link} is a symlink to {kind}: {target}; replace it with a copy")


def _packed_files(bundle: Path) -> dict[str, Path]:
    """``{bundle-relative path: file}`` of the bundle's own files to pack, checked: symlinks (:func:`_check_symlink`),
    no previous package of the bundle inside it, nothing over 25 MB that ``large_files.yml`` does not list. Left
    out: temporary files of interrupted writes (:func:`common.atomic.is_temporary`) and ``models/model_previous.pt``."""
    skipped_files = large_file_paths(bundle)
    previous_package = re.compile(rf"{re.escape(bundle.name)}_v.*\.zip(\.sha256)?")
    files: dict[str, Path] = {}
    for folder, dirs, names in os.walk(bundle):  # lists symlinked folders in `dirs` but does not enter them
        dirs[:] = [
            d
            for d in dirs
            if d not in SKIPPED_DIRS and Path(folder, d).relative_to(bundle).as_posix() not in SKIPPED_RELATIVE_DIRS
        ]
        for path in [Path(folder, d) for d in dirs if Path(folder, d).is_symlink()] + [Path(folder, n) for n in names]:
            relative = path.relative_to(bundle).as_posix()
            if relative in skipped_files:
                continue
            if is_temporary(path.name) or relative == f"models/{PREVIOUS_WEIGHTS}":
                print(f"not packed: {relative} (a partial write's leftover or the replaced weights MONAI Label keeps)")
                continue
            if path.is_symlink():
                _check_symlink(path, bundle)
            if not path.is_file():  # sockets, pipes
                continue
            if previous_package.fullmatch(path.name):
                raise InvalidInputError(
                    f"{path} looks like a package of this bundle: move it out of {bundle} (the new zip would contain "
                    "it) and write packages outside the bundle folder"
                )
            if path.stat().st_size > MAX_PACKED_BYTES:
                listing = bundle / "large_files.yml"
                raise InvalidInputError(
                    f"{path} is over 25 MB: list it in {listing} (url + sha256) instead of packing it"
                )
            files[relative] = path
    return files


def bundle_entries(bundle: Path) -> dict[str, bytes]:
    """``{archive path: bytes}`` of the packaged bundle, archive paths under ``<name>/``."""
    name = bundle.name
    own = _packed_files(bundle)
    for relative, path in own.items():
        if relative.startswith("configs/") and relative.endswith(".json"):
            load_json(path)
    entries = {f"{name}/{relative}": path.read_bytes() for relative, path in sorted(own.items())}
    package = vendored_package(name)
    for arcname in [a for a in entries if a.startswith(f"{name}/configs/") and a.endswith(".json")]:
        entries[arcname] = rewrite_common(entries[arcname].decode(), package).encode()
    files, third_party = import_closure(config_modules(bundle))
    for file in files:
        inside = Path(package, *file.relative_to(REPO / "common").parts).as_posix()
        entries[f"{name}/{inside}"] = rewrite_common(file.read_text(), package).encode()
    model_zoo = REPO / "tests" / "model_zoo"
    if (model_zoo / f"test_{name}.py").is_file():
        for test_file in (model_zoo / f"test_{name}.py", model_zoo / "sam_bundles_zoo.py"):
            entries[f"{name}/ci/unit_tests/{test_file.name}"] = test_file.read_bytes()
    entries[f"{name}/configs/metadata.json"] = packaged_metadata(bundle, third_party).encode()
    return entries


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_folders(bundle: str, output_dir: str) -> Path:
    """The resolved bundle folder; raises when it or the output folder cannot be used."""
    bundle_dir = Path(bundle).resolve()
    if not bundle_dir.is_dir():
        what = "is a file, not a folder" if bundle_dir.exists() else "not found"
        raise InputNotFoundError(f"bundle folder {bundle} {what}; pass a bundle folder such as bundles/medsam")
    if not (bundle_dir / "configs" / "metadata.json").is_file():
        raise InputNotFoundError(f"not a bundle (no configs/metadata.json): {bundle_dir}")
    if not BUNDLE_NAME.fullmatch(bundle_dir.name):
        raise InvalidInputError(
            f"bundle folder name {bundle_dir.name!r} ({bundle_dir}): use only letters, digits, '_' and '-', starting "
            "with a letter or digit (it names the zip, its top folder and the vendored package)"
        )
    out = Path(output_dir).resolve()
    if out.is_relative_to(bundle_dir):
        raise InvalidInputError(
            f"output folder {out} is inside the bundle folder {bundle_dir}: the next package would contain this one; "
            "write it elsewhere (e.g. dist/)"
        )
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output folder {out} is a file; pass a folder (it is created if missing)")
    return bundle_dir


def package(bundle: str, output_dir: str = "dist") -> str:
    """Write ``<output_dir>/<name>_v<version>.zip`` (+ ``.sha256``) for the bundle folder; return the zip path."""
    bundle_dir = _check_folders(bundle, output_dir)
    target = Path(output_dir) / f"{bundle_dir.name}_v{bundle_version(bundle_dir)}.zip"
    if target.is_dir():
        raise InvalidInputError(f"{target} is a folder: remove it or pass another output folder")
    entries = bundle_entries(bundle_dir)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for arcname, data in sorted(entries.items()):
            info = zipfile.ZipInfo(arcname, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    digest = sha256(target)
    write_text_atomic(f"{target}.sha256", f"{digest}  {target.name}\n")
    print(f"{target} sha256 {digest}")
    return str(target)


if __name__ == "__main__":
    run_cli(package)
