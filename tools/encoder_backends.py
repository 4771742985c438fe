"""Image-encoder backends side by side, for the benchmark tools of every bundle.

The four ways ``bundle.optimise_for_inference`` can run an encoder: torch float32 (every bundle's default), torch with
bf16 autocast (``precision bf16``), OpenVINO float32 and OpenVINO bf16 (``encoder_backend openvino``). Each is a copy
of the same loaded network, timed on the same input interleaved round by round (the order rotates), and compared
with torch float32: max abs difference and cosine of the encoder output. OpenVINO's first call (conversion and
compilation, no disk cache: ``weights_path`` None) is reported separately. Without OpenVINO installed, or for an
encoder it refuses, its rows say so.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F

from common.bundle import optimise_for_inference
from common.networks.openvino_encoder import openvino_installed

SIDES = (("torch", "float32"), ("torch", "bf16"), ("openvino", "float32"), ("openvino", "bf16"))

__all__ = ["SIDES", "backend_rows", "backend_table", "compare_encoder_backends"]


def _flat(out) -> torch.Tensor:
    """An encoder output (a tensor, or the 3-D encoder's list of them) as one float vector."""
    return torch.cat([t.float().flatten() for t in ([out] if isinstance(out, torch.Tensor) else out)])


def compare_encoder_backends(network, images: torch.Tensor, rounds: int, sides=SIDES) -> list[dict]:
    """Time ``network.image_encoder(images)`` on each of ``sides`` (``(backend, precision)``); one dict per side:
    ``backend, precision, ms`` (median of ``rounds``), ``first_s`` (first call), ``max_abs``, ``cosine`` (vs the
    first side), or ``skipped`` with the reason."""
    results: list[dict] = []
    runners: list[tuple] = []  # (network on that side, its result row)
    reference = None
    for backend, precision in sides:
        row = {"backend": backend, "precision": precision, "times": []}
        results.append(row)
        if backend == "openvino" and not openvino_installed():
            row["skipped"] = 'OpenVINO not installed (pip install -e ".[openvino]")'
            continue
        variant = optimise_for_inference(copy.deepcopy(network).eval(), precision, backend)
        with torch.no_grad():
            start = time.perf_counter()
            try:
                out = _flat(variant.image_encoder(images))
            except ValueError as e:  # an encoder OpenVINO does not run (one that fills a context)
                row["skipped"] = f"refused: {e}"
                continue
            row["first_s"] = time.perf_counter() - start
        reference = out if reference is None else reference
        row["max_abs"] = float((out - reference).abs().max())
        row["cosine"] = float(F.cosine_similarity(out.double(), reference.double(), dim=0))  # float32 can pass 1
        runners.append((variant, row))
    print(f"  encoder backends: {rounds} interleaved rounds ...", end="", flush=True)
    with torch.no_grad():
        for r in range(rounds):
            for variant, row in runners[r % len(runners) :] + runners[: r % len(runners)]:
                start = time.perf_counter()
                variant.image_encoder(images)
                row["times"].append(1000 * (time.perf_counter() - start))
    for row in results:
        if row["times"]:
            row["ms"] = statistics.median(row["times"])
    print(
        " " + ", ".join(f"{r['backend']} {r['precision']} {r['ms']:.0f} ms" for r in results if "ms" in r), flush=True
    )
    return results


def backend_rows(results: list[dict]) -> list[list[str]]:
    """Table rows: backend, precision, ms, speed-up over the first side, first call s, max abs, cosine."""
    base = results[0].get("ms")
    rows = []
    for r in results:
        if "skipped" in r:
            rows.append([r["backend"], r["precision"], r["skipped"], "", "", "", ""])
            continue
        rows.append(
            [
                r["backend"],
                r["precision"],
                f"{r['ms']:.0f}",
                f"**{base / r['ms']:.2f}x**",
                f"{r['first_s']:.1f}",
                f"{r['max_abs']:.2e}",
                f"{r['cosine']:.6f}",
            ]
        )
    return rows


def backend_table(results: list[dict]) -> list[str]:
    """Markdown table of :func:`compare_encoder_backends`'s results."""
    header = [
        "backend",
        "precision",
        "encoder ms (median)",
        "speed-up over torch float32",
        "first call s (OpenVINO: conversion + compilation)",
        "max abs difference to torch float32",
        "cosine to torch float32",
    ]
    rounds = len(results[0]["times"])
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in backend_rows(results)],
        "",
        f"Medians of {rounds} interleaved rounds after the first call; the same loaded network copied for each "
        "backend (`bundle.optimise_for_inference(network, precision, encoder_backend)`).",
    ]
