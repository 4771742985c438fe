"""Distributed training set-up for ``multi_gpu_train.json`` under ``torchrun``."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

__all__ = ["local_device", "shutdown"]


def local_device(backend: str | None = None) -> torch.device:
    """This process's device, with the default process group initialised (once) from torchrun's environment.

    ``backend`` defaults to ``"nccl"`` with CUDA and ``"gloo"`` without, so the same config trains on GPUs and on
    CPU processes. With CUDA the device is ``cuda:LOCAL_RANK`` and becomes the current device. Config use:
    ``"device": "$distributed.local_device()"``: every component that needs the device (the network, its
    ``DistributedDataParallel`` wrapper, the engines) then finds the process group ready.

    Raises:
        RuntimeError: not started by torchrun (``LOCAL_RANK`` is not set).
    """
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.json runs under torchrun (LOCAL_RANK is not set): "
            "torchrun --nproc_per_node=<N> -m monai.bundle run --config_file \"['configs/train.json',"
            "'configs/multi_gpu_train.json']\""
        )
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"))
    if not cuda:
        return torch.device("cpu")
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    torch.cuda.set_device(device)
    return device


def shutdown() -> None:
    """End of a torchrun workflow (config ``finalize``): wait for every rank, then destroy the process group.

    The barrier keeps a rank from tearing down its connections while another still finishes a collective (the last
    validation's metric gather, rank 0's checkpoint); the garbage collection then frees the backend's pending work
    objects while the interpreter is still alive rather than during its finalisation (a rare gloo abort at exit).
    A no-op when no process group is initialised.
    """
    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()
