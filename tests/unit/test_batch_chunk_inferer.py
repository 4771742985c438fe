"""BatchChunkInferer: same result as one call, never more than chunk_size samples per network call."""

import pytest
import torch

from common.inferers import BatchChunkInferer


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x, boxes=None, scale=1.0, return_iou=False):
        self.sizes.append(x.shape[0])
        out = x.sum(dim=1, keepdim=True) * scale + boxes.reshape(x.shape[0], -1).sum(1).reshape(-1, 1, 1, 1)
        return (out, out.mean(dim=(2, 3))) if return_iou else out


@pytest.mark.parametrize("chunk", [1, 3, 7, 20])
def test_chunks_match_a_single_call(chunk):
    x, boxes = torch.randn(7, 3, 5, 5), torch.randn(7, 1, 4)
    net = _Net()
    whole = net(x, boxes=boxes, scale=2.0)
    net.sizes.clear()
    out = BatchChunkInferer(chunk)(x, net, boxes=boxes, scale=2.0)
    torch.testing.assert_close(out, whole)
    assert max(net.sizes) <= chunk and sum(net.sizes) == 7
    logits, iou = BatchChunkInferer(chunk)(x, net, boxes=boxes, return_iou=True)
    assert isinstance(logits, torch.Tensor) and logits.shape == (7, 1, 5, 5) and iou.shape == (7, 1)


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size"):
        BatchChunkInferer(0)
