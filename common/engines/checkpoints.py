"""The best weights of a training run, written so that no interruption damages them or the weights it started from.

:class:`BestWeightsSaver` replaces MONAI's ``CheckpointSaver(save_key_metric=True)`` in the bundles' ``train.json``:
after each validation whose key metric beats every earlier one (the first always does), the networks' state dicts
are written to ``save_dir/filename`` through :func:`common.atomic.atomic_path` (a temporary file beside it, then a
rename), so a run killed while saving leaves the previous best whole (MONAI's saver writes in place: a kill there
left a 0-byte ``model.pt``). ``protected`` lists the weights files the run started from; a ``save_dir/filename``
that is one of them is refused before training starts, naming both. Where a run must write over the weights it
started from (MONAI Label's training updates the served ``models/model.pt``), ``keep_replaced_as`` names where the
file its first save replaces is kept (copied atomically), so those weights are never lost.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from torch import nn

from common.atomic import atomic_path
from common.bundle import unwrapped
from common.errors import InvalidInputError

__all__ = ["PREVIOUS_WEIGHTS", "BestWeightsSaver"]

#: Where MONAI Label's training keeps the served weights it replaced, beside them in ``models/`` (not packaged).
PREVIOUS_WEIGHTS = "model_previous.pt"


class BestWeightsSaver:
    """Attach to the validation engine. ``save_dict``: name -> module; with one entry its plain state dict is written
    (what ``inference.json`` loads), with several a dict of them. Only rank 0 of a distributed run writes."""

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, nn.Module],
        filename: str = "model.pt",
        protected: Sequence[str | os.PathLike] = (),
        keep_replaced_as: str | os.PathLike | None = None,
    ) -> None:
        self.path = os.path.abspath(os.path.join(save_dir, filename))
        self.keep_replaced_as = os.path.abspath(keep_replaced_as) if keep_replaced_as else None
        if self.keep_replaced_as == self.path:
            raise InvalidInputError(f"keep_replaced_as: {self.path} is the checkpoint itself; give another file")
        for weights in protected:
            if os.path.abspath(weights) == self.path or (
                os.path.exists(weights) and os.path.exists(self.path) and os.path.samefile(weights, self.path)
            ):
                raise InvalidInputError(
                    f"ckpt_dir: the best checkpoint {self.path} would overwrite {weights}, the weights this run starts "
                    "from; give another --ckpt_dir (the default is the run folder, runs/checkpoints) and copy the "
                    "result over the served weights when it is better"
                )
        self.save_dict = dict(save_dict)
        self.best: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        key = engine.state.key_metric_name  # type: ignore[attr-defined]  # set by MONAI's engines
        score = float(engine.state.metrics[key])
        if self.best is not None and score <= self.best:
            return
        self.best = score
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        states = {name: unwrapped(module).state_dict() for name, module in self.save_dict.items()}
        if self.keep_replaced_as and os.path.exists(self.path):
            with atomic_path(self.keep_replaced_as) as tmp:
                shutil.copyfile(self.path, tmp)
            self.keep_replaced_as = None  # once per run: later saves replace this run's own earlier best
        with atomic_path(self.path) as tmp:
            torch.save(next(iter(states.values())) if len(states) == 1 else states, tmp)
