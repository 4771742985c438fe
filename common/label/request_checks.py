"""Malformed ``/infer`` requests answer 4xx with the reason, and read nothing outside the datastore.

MONAI Label's endpoint parses the ``params`` form field and looks up the model and image itself, so a request with
broken JSON, an unknown model or an unknown image id ends in a bare HTTP 500, and an ``image`` naming a path that
exists on the server is read as is (``../x``, ``/abs/x.nii.gz``). :func:`check_params_before_parsing` wraps the
endpoint's function so ``params`` must be a JSON object (400 otherwise); :func:`check_model_and_image`, called by the
app's ``infer``, answers 404 for a model the server does not serve and for an image that is not a datastore id. An
uploaded image (``file``) or a session's image is therefore not served: the studies are the datastore's.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from fastapi import HTTPException

__all__ = ["check_model_and_image", "check_params_before_parsing"]


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
