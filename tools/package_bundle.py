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
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.atomic import atomic_path, write_text_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGE = "sam-medical-bundles"
ZIP_TIME = (2022, 5, 30, 0, 0, 0)  # model-zoo's fixed stamp (ci/update_model_info.py touches 202205300000)
SKIPPED_DIRS = {"eval", "runs", "__pycache__", ".pytest_cache"}
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
CORE = {"monai", "torch", "numpy", "common"}


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
                elif top in DISTRIBUTIONS or top in CORE:
                    third_party.add(top)
                elif top not in sys.stdlib_module_names:
                    raise ValueError(f"{file} imports '{top}', which has no distribution name in DISTRIBUTIONS")
    return sorted(files.values()), third_party - CORE


def large_file_paths(bundle: Path) -> set[str]:
    """Bundle-relative paths listed in ``large_files.yml`` (``path: ...`` lines)."""
    listing = bundle / "large_files.yml"
    if not listing.is_file():
        return set()
    return {m.strip().strip("'\"") for m in re.findall(r"path:\s*(\S+)", listing.read_text())}


def packaged_metadata(bundle: Path, third_party: set[str]) -> str:
    """The bundle's metadata with the project package replaced by the vendored code's third-party imports, plus
    what the CLI needs: fire for ``python -m monai.bundle``, pyyaml for ``download_large_files``."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    required = {k: v for k, v in meta.get("required_packages_version", {}).items() if k != PROJECT_PACKAGE}
    cli = {"fire"} | ({"yaml"} if (bundle / "large_files.yml").is_file() else set())
    for module in sorted(third_party | cli):
        name = DISTRIBUTIONS[module]
        required.setdefault(name, importlib_metadata.version(name))
    meta["required_packages_version"] = dict(sorted(required.items()))
    return json.dumps(meta, indent=4) + "\n"


def bundle_entries(bundle: Path) -> dict[str, bytes]:
    """``{archive path: bytes}`` of the packaged bundle, archive paths under ``<name>/``."""
    name = bundle.name
    skipped_files = large_file_paths(bundle)
    entries: dict[str, bytes] = {}
    for file in sorted(bundle.rglob("*")):
        relative = file.relative_to(bundle).as_posix()
        if not file.is_file() or SKIPPED_DIRS & set(file.relative_to(bundle).parts) or relative in skipped_files:
            continue
        if file.stat().st_size > MAX_PACKED_BYTES:
            raise ValueError(
                f"{file} is over 25 MB: list it in {bundle / 'large_files.yml'} (url + sha256) instead of packing it"
            )
        entries[f"{name}/{relative}"] = file.read_bytes()
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


def package(bundle: str, output_dir: str = "dist") -> str:
    """Write ``<output_dir>/<name>_v<version>.zip`` (+ ``.sha256``) for the bundle folder; return the zip path."""
    bundle_dir = Path(bundle).resolve()
    meta_file = bundle_dir / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"not a bundle (no configs/metadata.json): {bundle_dir}")
    version = json.loads(meta_file.read_text())["version"]
    target = Path(output_dir) / f"{bundle_dir.name}_v{version}.zip"
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
    fire.Fire(package)
