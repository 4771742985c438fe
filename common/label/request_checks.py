"""Malformed ``/infer`` requests answer 4xx with the reason, and read nothing outside the datastore.

MONAI Label's endpoint parses the ``params`` form field and looks up the model and image itself, so a request with
broken JSON, an unknown model or an unknown image id ends in a bare HTTP 500, and an ``image`` naming a path that
exists on the server is read as is (``../x``, ``/abs/x.nii.gz``). :func:`check_params_before_parsing` wraps the
endpoint's function so ``params`` must be a JSON object (400 otherwise); :func:`check_model_and_image`, called by the
app's ``infer``, answers 404 for a model the server does not serve and for an image that is not a datastore id. An
uploaded image (``file``) or a session's image is therefore not served: the studies are the datastore's.
:func:`check_served_weights` refuses a request whose ``model_filename`` names any file but the served ``model.pt``
(MONAI Label would load it, non-strictly), and :func:`check_train_params_before_running` applies it to ``/train``
requests before MONAI Label starts the training process.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from fastapi import HTTPException

__all__ = [
    "SERVED_WEIGHTS",
    "check_model_and_image",
    "check_params_before_parsing",
    "check_served_weights",
    "check_train_params_before_running",
]

SERVED_WEIGHTS = "model.pt"


def check_params_before_parsing() -> None:
    """Wrap ``monailabel.endpoints.infer.run_inference`` (once per process) so a ``params`` field that is not a
    JSON object answers HTTP 400 naming the problem, before MONAI Label's own ``json.loads`` and ``dict.update``."""
    from monailabel.endpoints import infer as endpoint

    original = endpoint.run_inference
    if getattr(original, "checks_params", False):
        return

    def run_inference(
        background_tasks, model, image="", session_id="", params="{}", file=None, label=None, output=None
    ):
        try:
            parsed = json.loads(params) if params else {}
        except json.JSONDecodeError as e:
            raise HTTPException(status_code=400, detail=f"'params' is not valid JSON: {e}") from e
        if not isinstance(parsed, dict):
            raise HTTPException(status_code=400, detail=f"'params' must be a JSON object, got {type(parsed).__name__}")
        return original(background_tasks, model, image, session_id, params, file, label, output)

    run_inference.checks_params = True  # type: ignore[attr-defined]
    endpoint.run_inference = run_inference


def check_model_and_image(request: dict, models: Collection[str], image_ids: Collection[str]) -> None:
    """HTTP 404 unless ``request["model"]`` is one of ``models`` and ``request["image"]`` one of ``image_ids``."""
    model, image = request.get("model"), request.get("image")
    if model not in models:
        raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server serves {sorted(models)}")
    if not isinstance(image, str) or image not in image_ids:
        raise HTTPException(
            status_code=404,
            detail=f"unknown image id {str(image)[:200]!r}: give a datastore study's id (GET /datastore/?output=all)",
        )


def check_served_weights(request, model: str = "model") -> None:
    """ValueError unless a request's ``model_filename`` (MONAI Label's weights option) is absent or the served
    ``model.pt``: a client never chooses which file the server loads."""
    chosen = request.get("model_filename")
    if chosen is not None and chosen not in (SERVED_WEIGHTS, [SERVED_WEIGHTS]):
        raise ValueError(
            f"{model} serves its models/{SERVED_WEIGHTS} only; 'model_filename' cannot choose another file, "
            f"got {str(chosen)[:200]!r}"
        )


def _check_train_params(params, model: str) -> None:
    """HTTP 400 when ``params`` (or one model's entry in them) holds another ``model_filename``."""
    entries = [params or {}, *[v for v in (params or {}).values() if isinstance(v, dict)]]
    try:
        for entry in entries:
            check_served_weights(entry, model)
    except ValueError as e:
        raise HTTPException(status_code=400, detail=str(e)) from e


def check_train_params_before_running() -> None:
    """Wrap ``monailabel.endpoints.train``'s ``run_model`` and ``run`` (once per process) so a ``/train`` request
    whose params hold another ``model_filename`` answers HTTP 400 before a training process starts."""
    from monailabel.endpoints import train as endpoint

    if getattr(endpoint.run_model, "checks_weights", False):
        return
    run_model_unchecked, run_unchecked = endpoint.run_model, endpoint.run

    def run_model(model, params=None, run_sync=False, enqueue=False):
        _check_train_params(params, str(model))
        return run_model_unchecked(model, params, run_sync, enqueue)

    def run(params=None, run_sync=False):
        _check_train_params(params, "every trainer")
        return run_unchecked(params, run_sync)

    run_model.checks_weights = True  # type: ignore[attr-defined]
    endpoint.run_model, endpoint.run = run_model, run
