"""Run a network over a large batch a few samples at a time.

Validation of slice-trained models draws all chosen slices of a volume at once (a dataset item is a list of slices,
flattened into one batch by MONAI's collate), which can be hundreds of slices: far more memory than a training step.
MONAI's inferers split images into windows, patches or spatial slices, not the batch, and hand extra network
arguments (here the per-sample box prompts) to every call unchanged, so none of them bounds this.
"""

from __future__ import annotations

import torch
from monai.inferers import Inferer


class BatchChunkInferer(Inferer):
    """``inferer(inputs, network, *args, **kwargs)`` = ``network(inputs, *args, **kwargs)`` computed ``chunk_size``
    samples at a time.

    Tensor arguments whose first dimension is the batch size (e.g. ``boxes`` ``(B, 1, 4)``) are split with the
    inputs; other arguments are passed to every call as they are. Outputs (a tensor, or a tuple/list of tensors) are
    concatenated along the batch dimension.
    """

    def __init__(self, chunk_size: int = 4):
        super().__init__()
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        n = inputs.shape[0]

        def part(value, sl):
            return value[sl] if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n else value

        outputs = []
        for start in range(0, n, self.chunk_size):
            sl = slice(start, start + self.chunk_size)
            outputs.append(
                network(inputs[sl], *[part(a, sl) for a in args], **{k: part(v, sl) for k, v in kwargs.items()})
            )
        if len(outputs) == 1:
            return outputs[0]
        if isinstance(outputs[0], (tuple, list)):
            return type(outputs[0])(torch.cat(parts) for parts in zip(*outputs))
        return torch.cat(outputs)
