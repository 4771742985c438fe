"""Config values checked where a bundle starts, so a wrong value stops the run instead of quietly doing harm.

Each check returns the value (or nothing) and raises :class:`~common.errors.InvalidInputError` naming the config key.
Bundle configs call them in ``initialize``, after any ``--key value`` override has been applied, e.g.
``"$checks.label_value(@output_label, 'output_label')"``. :func:`check_cli_overrides` refuses an override that names
no key of the configs (``--ouput_dir`` would otherwise be added silently and the output land in the default folder)
and a ``--device`` this machine does not have.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import math
import sys
from collections.abc import Sequence

import torch

from common.errors import InvalidInputError

__all__ = ["check_cli_overrides", "device", "finite_numbers", "label_value", "one_of", "positive", "value_range"]


def label_value(value, key: str = "output_label", highest: int = 255) -> int:
    """An integer label in ``1..highest`` (255: the uint8 label maps the bundles write)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= highest:
        raise InvalidInputError(f"'{key}' must be an integer label in 1..{highest} (uint8 output), got {value!r}")
    return value


def value_range(pair, key: str) -> tuple[float, float]:
    """Two finite numbers ``[low, high]`` with ``low < high`` (an intensity window, a HU range)."""
    numbers = finite_numbers(pair, key)
    if len(numbers) != 2 or not numbers[0] < numbers[1]:
        raise InvalidInputError(f"'{key}' must be [low, high] with low < high, got {pair!r}")
    return numbers[0], numbers[1]


def positive(value, key: str) -> float:
    """A finite number above 0 (a standard deviation, a spacing)."""
    (number,) = finite_numbers([value], key)
    if number <= 0:
        raise InvalidInputError(f"'{key}' must be a number above 0, got {value!r}")
    return number


def one_of(value, key: str, choices: Sequence):
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise InvalidInputError(f"'{key}' must be one of {list(choices)}, got {value!r}")
    return value


def finite_numbers(values, key: str) -> list[float]:
    """A list (or tuple) of finite ints/floats (not bools) as floats; the message shows at most 80 characters."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidInputError(f"'{key}' must be a list of numbers, got {values!r:.80}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        raise InvalidInputError(f"'{key}' must hold finite numbers, got {list(values)!r:.80}")
    return [float(v) for v in values]


def device(value, key: str = "device") -> torch.device:
    """A ``torch.device`` this machine has (``"cuda"`` needs a CUDA build and a visible GPU)."""
    try:
        resolved = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise InvalidInputError(f"'{key}': {value!r} is not a device (use cpu, cuda or cuda:N)") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(f"'{key}': {value!r} asked for, but this machine has no CUDA GPU; use cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InvalidInputError(f"'{key}': {value!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    return resolved


def check_cli_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse ``python -m monai.bundle run`` overrides that name no config key, and an unavailable ``--device``.

    ``argv`` defaults to ``sys.argv[1:]`` (``run --config_file ... --key value ...``). A top-level key must exist
    in one of the config files; a nested id ``a#b#c`` needs its parent ``a#b`` (so new keyword arguments can be
    added to a component). The run's own options (``--config_file``, ``--meta_file``, ...) are not overrides.
    """
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import run

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("run", "run_workflow"):
        return
    overrides = _cli_options(args[1:])
    own = set(inspect.signature(run).parameters) | set(inspect.signature(ConfigWorkflow.__init__).parameters)
    files = _config_files(overrides.get("config_file"))
    if not files:
        return
    ids = set()
    for file in files:
        ids |= _config_ids(_read_config(file))
    for name, value in overrides.items():
        if name in own:
            continue
        parent = name.rsplit("#", 1)[0] if "#" in name else None
        if name not in ids and (parent is None or parent not in ids):
            near = difflib.get_close_matches(name, sorted(i for i in ids if "#" not in i), n=1)
            hint = f" (did you mean '--{near[0]}'?)" if near else ""
            raise InvalidInputError(f"'--{name}' is not a key of {', '.join(files)}{hint}")
        if name == "device":
            device(value)


def _cli_options(args: list[str]) -> dict[str, str]:
    """``--name value`` / ``--name=value`` pairs of a fire command line (a bare ``--flag`` maps to ``"True"``)."""
    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            if not eq:
                has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
                value = args[i + 1] if has_value else "True"
                i += 1 if has_value else 0
            options[name] = value
        i += 1
    return options


def _config_files(value: str | None) -> list[str]:
    if not value:
        return []
    text = value.strip()
    if text.startswith("["):
        try:
            return [str(f) for f in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            return []
    return [f.strip() for f in text.split(",")] if "," in text else [text]


def _read_config(file: str):
    if file.endswith((".yaml", ".yml")):
        import yaml

        with open(file) as handle:
            return yaml.safe_load(handle)
    with open(file) as handle:
        return json.load(handle)


def _config_ids(config, prefix: str = "") -> set[str]:
    """Every id of a parsed config: ``a``, ``a#b``, ``a#0`` ... (MONAI's ``#`` paths into dicts and lists)."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else []
    ids = set()
    for name, value in items:
        path = f"{prefix}{name}"
        ids |= {path} | _config_ids(value, f"{path}#")
    return ids
