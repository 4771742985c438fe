"""VolumeSlicePromptInferer puts each click and box where it was given on a non-square volume, and the masks back
on the same voxels: file ``[x, y, z]`` -> SAM's stretched frame (rows along y) -> the volume's ``(X, Y)`` slice."""

from __future__ import annotations

import torch

from common.methods.samihs.volume import VolumeSlicePromptInferer

SIZE = 64  # the model frame: a 40 x 24 slice is stretched 1.6x along x and 2.67x along y
SHAPE = (40, 24, 5)


class PaintsItsPrompts:
    """Stands in for SAMIHS: ``decode`` answers +10 logits within ``radius`` model pixels of each foreground click
    and on the pixels the box covers, -10 elsewhere, at the model frame's size; ``encode`` records what it is given."""

    def __init__(self, radius: float = 4.0) -> None:
        self.radius, self.encoded = radius, []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encoded.append(images.shape)
        return images

    def decode(self, embeddings, point_coords=None, point_labels=None, boxes=None):
        size = embeddings.shape[-1]
        rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                    indexing="ij")  # fmt: skip
        inside = torch.zeros(size, size, dtype=torch.bool)
        if point_coords is not None:
            for (x, y), label in zip(point_coords[0].tolist(), point_labels[0].tolist()):
                if label == 1:
                    inside |= (cols - x) ** 2 + (rows - y) ** 2 <= self.radius**2
        if boxes is not None:
            x0, y0, x1, y1 = boxes[0].tolist()
            half = 0.5  # every pixel the box's corner pixels' centres reach into
            inside |= (cols >= x0 - half) & (cols <= x1 + half) & (rows >= y0 - half) & (rows <= y1 + half)
        return torch.where(inside, 10.0, -10.0)[None, None], None


def _run(network, points, point_labels, point_classes, boxes, box_labels) -> torch.Tensor:
    volume = torch.rand(1, 1, *SHAPE, generator=torch.Generator().manual_seed(0)) * 80.0
    inferer = VolumeSlicePromptInferer(image_size=SIZE)
    as_batch = [torch.as_tensor(v)[None] for v in (points, point_labels, point_classes, boxes, box_labels)]
    return inferer(volume, network, *as_batch)[0, 0]


def test_clicks_and_boxes_land_on_their_voxels_of_a_non_square_volume():
    network = PaintsItsPrompts()
    out = _run(
        network,
        points=[[30.0, 6.0, 2.0], [3.0, 20.0, 2.0]],
        point_labels=[1, 0],  # the background click paints nothing
        point_classes=[1, 1],
        boxes=[[5.0, 15.0, 3.0, 12.0, 20.0, 4.0]],
        box_labels=[2],
    )
    assert out.shape == SHAPE and network.encoded == [(1, 1, SIZE, SIZE)] * 3  # slices 2, 3, 4 only
    assert out[..., :2].eq(0).all()
    click = torch.nonzero(out[..., 2] == 1).float()
    assert out[30, 6, 2] == 1 and torch.allclose(click.mean(0), torch.tensor([30.0, 6.0]), atol=0.5)
    extent = click.max(0).values - click.min(0).values  # 4 model px: 2.5 voxels along x, 1.5 along y
    assert extent[0] > extent[1]
    assert out[3, 20, 2] == 0 and set(out[..., 2].unique().tolist()) == {0, 1}
    for z in (3, 4):
        box = torch.nonzero(out[..., z] == 2)
        assert box.min(0).values.tolist() == [5, 15] and box.max(0).values.tolist() == [12, 20]
        assert len(box) == 8 * 6 and set(out[..., z].unique().tolist()) == {0, 2}
