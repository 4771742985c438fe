"""The project's MONAI Label app: every bundle folder with inference weights, served with its prompts.

Start it (``pip install .[monailabel]``; the app folder is ``apps/sam_bundles``, see :mod:`common.label.serve`)::

    python -m common.label.serve --studies <images> \
        [--conf models medsam,3dsam_pancreas] [--conf bundles_dir <folder of bundles>] \
        [--conf embedding_cache_mb 2048] [--conf skip_trainers true] \
        [--conf encoder_backend torch|openvino|auto] [--conf precision float32|bf16|auto]

``bundles_dir`` defaults to the repository's ``bundles/``; ``models`` defaults to every bundle there that has
``configs/inference.json`` and ``models/model.pt``. ``encoder_backend`` and ``precision`` replace every served
bundle's own values (:func:`common.bundle.optimise_for_inference`). Each bundle becomes an inference task
(:mod:`common.label.infer`) and, when it has ``configs/train.json`` and its ``inference.json`` does not say
``"served_training": false`` (bundles whose training reads datalists of slices or clips, not the datastore's images),
a MONAI Label training task (:class:`ServedBundleTrainTask`: MONAI Label's ``BundleTrainTask`` writing the best
weights over the served ``models/model.pt``, atomically, keeping the replaced weights as ``models/model_previous.pt``;
the inference task then reloads them). ``--studies`` may
be a DICOMweb URL (a PACS: :mod:`common.label.pacs`; final labels are saved there as DICOM SEG). Requests are
checked first (:mod:`common.label.request_checks`): malformed ones answer 4xx with the reason, and only datastore
images are segmented.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import metadata as importlib_metadata
from pathlib import Path

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import strtobool

from common.engines.checkpoints import PREVIOUS_WEIGHTS
from common.label.infer import PromptedBundleInferTask
from common.label.pacs import dicomweb_datastore
from common.label.request_checks import (
    check_model_and_image,
    check_params_before_parsing,
    check_served_weights,
    check_train_params_before_running,
)

logger = logging.getLogger(__name__)

REPO_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


class ServedBundleTrainTask(BundleTrainTask):
    """MONAI Label training updates the model it serves: it starts from ``models/model.pt`` (MONAI Label's
    ``CheckpointLoader``, here strict; MONAI's loader reads weights-only) and the bundle's best weights replace that
    file atomically (:class:`common.engines.checkpoints.BestWeightsSaver`, so a training stopped while saving leaves
    the served weights whole), after the weights it started from are kept as ``models/model_previous.pt``. The
    bundle's own ``train.json`` writes to its run folder instead. MONAI Label's ``model_filename`` option is not
    offered, and a request naming another file fails (:func:`common.label.request_checks.check_served_weights`)."""

    def __init__(self, path: str, conf: dict, **kwargs):
        super().__init__(path, conf, load_strict=True, **kwargs)

    def config(self):
        options = super().config()
        options.pop("model_filename", None)  # any models/*.pt, the shortest name by default
        return options

    def __call__(self, request, datastore):
        check_served_weights(request, os.path.basename(self.bundle_path))
        return super().__call__({k: v for k, v in request.items() if k != "model_filename"}, datastore)

    def _update_overrides(self, overrides):
        models = os.path.join(self.bundle_path, "models")
        overrides["ckpt_dir"] = models
        overrides["protected_weights"] = []
        overrides["previous_weights"] = os.path.join(models, PREVIOUS_WEIGHTS)
        return super()._update_overrides(overrides)


def find_bundles(bundles_dir: str | os.PathLike, models: str | None = None) -> dict[str, str]:
    """``{name: folder}`` of the bundles to serve: ``models`` (comma-separated names) or every folder of
    ``bundles_dir`` with ``configs/inference.json`` and ``models/model.pt``. A named bundle that is missing, or
    lacks its weights, is an error naming the file."""
    root = Path(bundles_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"bundles_dir not found: {root}")
    if models:
        names = [m.strip() for m in models.split(",") if m.strip()]
        for name in names:
            for required in ("configs/inference.json", "models/model.pt"):
                if not (root / name / required).is_file():
                    raise FileNotFoundError(f"bundle '{name}': {root / name / required} not found")
    else:
        names = sorted(
            p.name
            for p in root.iterdir()
            if (p / "configs" / "inference.json").is_file() and (p / "models" / "model.pt").is_file()
        )
        skipped = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in names)
        if skipped:
            logger.warning(f"Not serving {skipped}: no configs/inference.json or models/model.pt")
    return {name: str(root / name) for name in names}


class SamBundlesApp(MONAILabelApp):
    """MONAI Label app over the bundle collection (see the module docstring for its ``--conf`` options)."""

    def __init__(self, app_dir, studies, conf):
        self.bundles = find_bundles(conf.get("bundles_dir", REPO_BUNDLES), conf.get("models"))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SAM medical bundles",
            description="Segment Anything adaptations (MedSAM, 3DSAM-adapter, MSA) with clicks and ROI boxes",
            version=importlib_metadata.version("sam-medical-bundles"),
        )
        check_params_before_parsing()
        check_train_params_before_running()

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer``, for served models and datastore images only (:mod:`common.label.request_checks`)."""
        check_model_and_image(request, self._infers, (datastore or self.datastore()).list_images())
        return super().infer(request, datastore)

    def init_remote_datastore(self):
        """A DICOMweb URL (a PACS) -> :func:`common.label.pacs.dicomweb_datastore`; XNAT, DSA and Google's
        Healthcare API as MONAI Label does it."""
        if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa") or "googleapis.com" in self.studies:
            return super().init_remote_datastore()
        return dicomweb_datastore(self.studies)

    def init_infers(self):
        infers = {}
        for name, path in self.bundles.items():
            task = PromptedBundleInferTask(path, self.conf)
            if not task.is_valid():
                raise RuntimeError(f"bundle '{name}' at {path} could not be loaded for inference")
            logger.info(f"+++ Serving {name} ({task.type}, prompts {task.prompt_keys})")
            infers[name] = task
        return infers

    def init_trainers(self):
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        trainers = {}
        for name, path in self.bundles.items():
            configs = Path(path) / "configs"
            served_training = json.loads((configs / "inference.json").read_text()).get("served_training", True)
            if (configs / "train.json").is_file() and served_training:
                trainers[name] = ServedBundleTrainTask(path, self.conf)
        return trainers

    def init_strategies(self):
        return {"random": Random(), "first": First()}
