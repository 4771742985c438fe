"""The torchrun workflow's end: ``distributed.shutdown`` waits, destroys the process group, and is safe to repeat."""

import torch.distributed as dist

from common.engines import distributed


def test_shutdown_destroys_the_group_and_is_a_no_op_without_one(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert dist.is_initialized()
    distributed.shutdown()
    assert not dist.is_initialized()
    distributed.shutdown()  # nothing to do: no error
    assert not dist.is_initialized()
