"""MONAI Label inference task for a prompted bundle (clicks / ROI boxes -> the bundle's own prompt inputs).

Stock ``BundleInferTask`` calls ``inferer(inputs, network)`` only, so a SAM-style bundle never sees its prompts.
This task runs the bundle's own ``inference.json`` pieces the way ``python -m monai.bundle run`` does:

1. request ``foreground`` / ``background`` / ``roi`` -> the bundle's ``input_dict`` prompt keys
   (:mod:`common.label.request_prompts`), before preprocessing, so the bundle's transforms map them to its grid;
2. the bundle's ``preprocessing``; then the ``inferer`` with the keyword inputs that the bundle's evaluator
   passes (``evaluator#prepare_batch#extra_keys``), collated as its DataLoader would;
3. the bundle's ``postprocessing`` (its file writer dropped; MONAI Label writes the label map), thresholded at
   ``served_threshold`` when the bundle outputs probabilities.

A bundle that takes a dense mask prompt names its input key in ``served_mask_prompt``: the request's uploaded
``label`` file (MONAI Label's ``/infer`` form field) becomes that input, and clicks or boxes are then optional.

Requests to one model run one at a time (the network, its embedding cache and the parsed config are shared).

Only the bundle's own ``models/model.pt`` is served, loaded strictly and weights-only as on the command line
(:func:`common.bundle.load_weights`), and reloaded when the file changes: MONAI Label's ``model_filename`` option
(any ``.pt`` a request names, loaded non-strictly) is not offered, and a request naming another file answers 400.
"""

from __future__ import annotations

import copy
import os
import re
import threading

import numpy as np
import torch
from fastapi import HTTPException
from monai.data import list_data_collate
from monai.transforms import AsDiscreted, CastToTyped, SaveImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.pre import LoadImageTensord

from common.bundle import guard_finite_outputs, load_weights, optimise_for_inference
from common.errors import BundleInputError
from common.label.cache import StackEmbeddingCache, cache_image_embeddings
from common.label.request_checks import SERVED_WEIGHTS, check_served_weights
from common.label.request_prompts import PROMPT_KEYS, request_prompts
from common.transforms.io import AtomicSaveImaged
from common.transforms.ultrasound import RASTER_SUFFIXES

DEFAULT_CACHE_MB = 2048


def _file_stamp(path: str) -> tuple[int, int, int]:
    """(inode, size, mtime in ns): changes when the file is replaced (atomic writes) or rewritten."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _structure_name(channel_name: str) -> str:
    """``"target (logit)"`` -> ``"target"``."""
    return re.sub(r"\s*\(.*\)\s*$", "", channel_name).strip() or "foreground"


def _loader_for(transform, data: dict):
    """``transform``, or the bundle's ``LoadImaged`` inside MONAI Label's ``LoadImageTensord`` when that loader
    allows missing keys and ``data`` has none of them."""
    inner = transform.load_image_d if isinstance(transform, LoadImageTensord) else None
    if inner is not None and inner.allow_missing_keys and not any(k in data for k in transform.keys):
        return inner
    return transform


class PromptedBundleInferTask(BundleInferTask):
    """Serve one bundle folder (``configs/inference.json`` + ``models/model.pt``) with its prompts.

    Args:
        path: the bundle folder.
        conf: the server's ``--conf`` values; ``embedding_cache_mb`` bounds the reused image embeddings
            (default 2048; 0 disables reuse); ``encoder_backend`` (``torch`` / ``openvino`` / ``auto``) and
            ``precision`` (``float32`` / ``bf16`` / ``auto``) replace the bundle's own values for the image encoder.
    """

    # set by BundleInferTask (monailabel has no type information) and rewritten in __init__
    labels: dict[str, int]
    description: str

    def __init__(self, path: str, conf: dict, **kwargs):
        self._lock = threading.Lock()
        super().__init__(path, conf, post_filter=[SaveImaged, AtomicSaveImaged], **kwargs)
        if not self.valid:
            return
        input_dict = self.bundle_config.get_parsed_content("input_dict", instantiate=True)
        served = self.bundle_config.get("served_prompts")
        self.prompt_keys = tuple(k for k in PROMPT_KEYS if k in (served or input_dict))
        if not self.prompt_keys:
            raise ValueError(f"{path}: inference.json 'input_dict' names no prompt key of {PROMPT_KEYS}")
        self.extra_keys = dict(self.bundle_config.get("evaluator#prepare_batch#extra_keys") or {})
        self.mask_prompt_key = self.bundle_config.get("served_mask_prompt")
        self.threshold = self.bundle_config.get("served_threshold")
        self.name = path.rstrip("/").split("/")[-1]
        self.type = InferType.DEEPGROW if "points" in self.prompt_keys else InferType.SEGMENTATION
        # A volume from the datastore (MedSAM runs slice-wise on it), or a 2-D frame where the bundle says so
        self.dimension = int(self.bundle_config.get("served_dimension", 3))
        self.precision = str(
            conf.get("precision") or self.bundle_config.get_parsed_content("precision", default="float32")
        )
        self.encoder_backend = str(
            conf.get("encoder_backend") or self.bundle_config.get_parsed_content("encoder_backend", default="torch")
        )
        # OpenVINO's converted encoders are cached beside the served weights (models/openvino/)
        self.weights_path = os.path.join(path, "models", SERVED_WEIGHTS)
        self._config.pop("model_filename", None)  # MONAI Label's choice of any models/*.pt, loaded non-strictly
        # one prompted structure per request, written as 1 (channel_def names are output channels, e.g. logits)
        names = [_structure_name(n) for n in self.labels or {} if not n.lower().startswith("background")]
        self.labels = {name: 1 for name in names} or {"foreground": 1}
        self.cache_bytes = int(float(conf.get("embedding_cache_mb", DEFAULT_CACHE_MB)) * 2**20)
        self.description = f"{self.description} Prompts: {', '.join(self.prompt_keys)}."
        self.embedding_caches: dict[str, StackEmbeddingCache] = {}

    def info(self):
        info = super().info()
        info["prompts"] = list(self.prompt_keys) + (["label (mask prompt file)"] if self.mask_prompt_key else [])
        return info

    def __call__(self, request, callbacks=None):
        """Run one request; bad prompts (missing, of the wrong kind, outside the image: ValueError from here or
        from the bundle's own checks) answer HTTP 400 with the message instead of a bare 500."""
        try:
            request = dict(request)
            check_served_weights(request, self.name)
            request.pop("model_filename", None)
            if self.mask_prompt_key:  # only the uploaded file, never a path a client names in its params
                request.pop(self.mask_prompt_key, None)
            mask = request.pop("label", None) if self.mask_prompt_key else None
            if self.mask_prompt_key and mask is None and not (request.get("foreground") or request.get("roi")):
                raise ValueError("upload a probability map as the 'label' file, or give a foreground click or an ROI")
            if mask is not None:
                request[self.mask_prompt_key] = mask
            prompts = request_prompts(request, self.prompt_keys, self.name, self.dimension, optional=mask is not None)
            request.update(prompts)
            with self._lock:
                return super().__call__(request, callbacks)
        except ValueError as error:
            raise HTTPException(status_code=400, detail=f"{self.name}: {error}") from error

    def run_pre_transforms(self, data, transforms):
        """The bundle's preprocessing, with MONAI Label's ``image_path`` string set aside meanwhile: MONAI's
        ``Spacingd`` merges NIfTI meta into every ``image_*`` entry of the dict and fails on a string. MONAI Label
        wraps each ``LoadImaged`` in its ``LoadImageTensord``, which looks every key up: where the bundle's loader
        allows its keys to be missing (an optional mask prompt) and they are, the bundle's own loader runs instead."""
        transforms = [_loader_for(t, data) for t in transforms]
        image_path = data.pop("image_path", None)
        data = super().run_pre_transforms(data, transforms)
        if image_path is not None:
            data["image_path"] = image_path
        return data

    def post_transforms(self, data=None):
        """The bundle's postprocessing (minus its writer), then uint8 labels (ITK cannot write int64 images); a 2-D
        label loses its channel axis so it is written as a 2-D image of the input's size."""
        squeeze = [SqueezeDimd(keys=self.key_pred, dim=0)] if self.dimension == 2 else []
        threshold = [] if self.threshold is None else [AsDiscreted(keys=self.key_pred, threshold=float(self.threshold))]
        return [*super().post_transforms(data), *threshold, *squeeze, CastToTyped(keys=self.key_pred, dtype=np.uint8)]

    def _get_network(self, device, data):
        """The network with ``models/model.pt`` loaded strictly and weights-only, once per device and weights file
        (reloaded when training replaces it), then :func:`common.bundle.optimise_for_inference`, the finite-output
        guard and the embedding cache. Weights that do not load answer HTTP 500 naming the problem."""
        stamp = _file_stamp(self.weights_path)
        cached = self._networks.get(device)
        if cached is not None and cached[1] == stamp:
            return cached[0]
        network = copy.deepcopy(self.network).to(torch.device(device))
        try:
            load_weights(network, self.weights_path, f"{self.name}'s served weights")
        except BundleInputError as error:
            raise HTTPException(status_code=500, detail=f"{self.name}: {error}") from error
        network.eval()
        optimise_for_inference(network, self.precision, self.encoder_backend, self.weights_path)
        guard_finite_outputs(network)  # a NaN answer is an error, as on the command line
        if self.cache_bytes > 0:
            cache = cache_image_embeddings(network, self.cache_bytes)
            if cache is not None:
                self.embedding_caches[str(device)] = cache
        self._networks[device] = (network, stamp)
        return network

    def writer(self, data, extension=None, dtype=None):
        """MONAI Label's writer; the result JSON also reports the embedding cache's hits and misses so far."""
        if self.dimension == 2 and extension is None:  # a label PNG for raster frames (not lossy JPEG), else NIfTI
            raster = str(data.get("image_path", "")).lower().endswith(RASTER_SUFFIXES)
            extension = ".png" if raster else ".nii.gz"
        result_file, result_json = super().writer(data, extension, dtype)
        cache = self.embedding_caches.get(str(data.get("device")))
        if cache is not None:
            result_json["embedding_cache"] = {"hits": cache.hits, "misses": cache.misses}
        return result_file, result_json

    def run_inferer(self, data, convert_to_batch=True, device="cpu"):
        """The bundle's inferer on the preprocessed image, with its prompt tensors as keyword inputs."""
        inferer = self.inferer(data)
        network = self._get_network(device, data)
        target = torch.device(device)
        # {keyword: item key}, as PrepareBatchExtraInput; a key may be absent (a clip name only exists for videos)
        present = {name: key for name, key in self.extra_keys.items() if key in data}
        batch = list_data_collate([{key: data[key] for key in (self.input_key, *present.values())}])
        kwargs = {
            name: batch[key].to(target) if isinstance(batch[key], torch.Tensor) else batch[key]
            for name, key in present.items()
        }
        inputs = batch[self.input_key].to(target)
        with torch.no_grad():
            outputs = inferer(inputs, network, **kwargs)
        data[self.output_label_key] = outputs[0]
        return data
