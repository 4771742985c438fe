"""Check that a packaged bundle's pinned packages install on every supported Python, and agree with each other.

    python tools/check_pins.py bundles/medsam [--pythons 3.10,3.11,3.12]

Reads the metadata a zip would carry (``tools/package_bundle.py``: ``monai_version``, ``pytorch_version``,
``numpy_version`` and ``required_packages_version``) and, for each Python version, asks pip to resolve every pin
from wheels only for Linux x86_64 (``pip install --dry-run --no-deps --only-binary=:all: --python-version V``;
nothing is downloaded beyond metadata, nothing installed). Then every requirement that a pinned release declares
on another pinned package must accept that pin (e.g. monai's numpy range). Dependencies are not resolved as a
whole: torch's CUDA wheels are not on every index. Needs the package registry. Exit status 1 on any problem.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import fire
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
import package_bundle  # noqa: E402

PYTHONS = ("3.10", "3.11", "3.12")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def bundle_pins(bundle: str) -> dict[str, str]:
    """``{distribution: version}`` of everything the packaged metadata of ``bundle`` pins."""
    bundle_dir = Path(bundle).resolve()
    if not (bundle_dir / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"not a bundle (no configs/metadata.json): {bundle_dir}")
    _, third_party = package_bundle.import_closure(package_bundle.config_modules(bundle_dir))
    meta = json.loads(package_bundle.packaged_metadata(bundle_dir, third_party))
    pins = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
    pins.update(meta["required_packages_version"])
    return pins


@functools.lru_cache(maxsize=None)
def release_requires(name: str, version: str, python: str) -> tuple[tuple[str, ...] | None, str]:
    """(``requires_dist`` of the wheel pip picks for ``name==version`` on ``python``, "") or (None, pip's last
    error line). One pip call per release and Python, remembered: bundles share most pins."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    with tempfile.TemporaryDirectory() as target:
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps"]
        command += ["--only-binary=:all:", "--python-version", python, *platforms, "--target", target]
        command += ["--quiet", "--report", "-", f"{name}=={version}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["(no message)"])[-1]
    (item,) = json.loads(done.stdout)["install"]
    return tuple(item["metadata"].get("requires_dist") or ()), ""


def resolve(pins: dict[str, str], python: str) -> tuple[dict[str, list[str]], list[str]]:
    """(``{name: requires_dist}`` of each pinned release found, problems) for one Python version."""
    found: dict[str, list[str]] = {}
    problems: list[str] = []
    for name, version in sorted(pins.items()):
        requires, error = release_requires(name, version, python)
        if requires is None:
            problems.append(f"Python {python}: {name}=={version} has no installable wheel: {error}")
        else:
            found[canonicalize_name(name)] = list(requires)
    return found, problems


def conflicts(pins: dict[str, str], requires: dict[str, list[str]], python: str) -> list[str]:
    """Requirements of pinned releases on other pinned packages that the pins do not satisfy."""
    versions = {canonicalize_name(k): v for k, v in pins.items()}
    environment = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}
    environment.update(sys_platform="linux", platform_system="Linux", platform_machine="x86_64", extra="")
    problems = []
    for owner, lines in sorted(requires.items()):
        for line in lines:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            if name not in versions or (requirement.marker and not requirement.marker.evaluate(environment)):
                continue
            if not requirement.specifier.contains(versions[name], prereleases=True):
                problems.append(f"Python {python}: {owner} requires {line}, but {name}=={versions[name]} is pinned")
    return problems


def check(bundle: str, pythons: str | tuple = PYTHONS) -> list[str]:
    """All problems with ``bundle``'s pins on ``pythons`` (comma-separated or a tuple); prints a summary."""
    versions = pythons.split(",") if isinstance(pythons, str) else list(pythons)
    pins = bundle_pins(bundle)
    problems = []
    for python in versions:
        requires, missing = resolve(pins, python)
        problems += missing + conflicts(pins, requires, python)
    pinned = ", ".join(f"{k}=={v}" for k, v in sorted(pins.items()))
    print(f"{bundle}: {len(pins)} pins on Python {', '.join(versions)}: {pinned}")
    for problem in problems:
        print(f"  {problem}")
    return problems


def main(bundle: str, pythons: str = ",".join(PYTHONS)) -> None:
    if check(bundle, pythons):
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
