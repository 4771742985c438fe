"""Boxes given in file voxel indices follow the image through orientation changes."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd

from common.transforms.geometry import FileBoxesToArrayd, map_boxes, orientationd, validate_boxes


def _ras_volume(shape=(10, 8, 6)):
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [-5, 7, 11]
    meta = {
        "affine": torch.tensor(affine),
        "original_affine": torch.tensor(affine),
        "spatial_shape": np.array(shape),
        "filename_or_obj": "case.nii.gz",
    }
    return MetaTensor(torch.arange(np.prod(shape)).reshape(shape).float(), meta=meta)


def test_validate_boxes_accepts_and_converts():
    out = validate_boxes([[1, 2, 3, 4, 5, 5]], (10, 8, 6))
    assert out.tolist() == [[1, 2, 3, 4, 5, 5]] and out.dtype == np.int64
    # a 2D box on a one-slice volume becomes slice 0
    assert validate_boxes([1, 2, 3, 4], (10, 8, 1)).tolist() == [[1, 2, 0, 3, 4, 0]]


@pytest.mark.parametrize(
    "boxes, shape, message",
    [
        ([[4, 2, 3, 1, 5, 5]], (10, 8, 6), "inverted"),
        ([[0, 0, 0, 10, 5, 5]], (10, 8, 6), "outside the image"),
        ([[-1, 0, 0, 3, 5, 5]], (10, 8, 6), "outside the image"),
        ([[0, 0, 0, 3, 5, 5]], (10, 8), "a volume is required"),
        ([[0, 0, 3, 5]], (10, 8, 6), "need a 2D image"),
        ([[0, 0, 3]], (10, 8, 6), "needs 6 values"),
        ([[0.5, 0, 0, 3, 5, 5]], (10, 8, 6), "integer voxel indices"),
        ([[float("nan"), 0, 0, 3, 5, 5]], (10, 8, 6), "integer voxel indices"),
    ],
)
def test_validate_boxes_errors_name_the_file(boxes, shape, message):
    with pytest.raises(ValueError, match=message) as err:
        validate_boxes(boxes, shape, source="scan.nii.gz", key="boxes")
    assert "scan.nii.gz" in str(err.value) and "'boxes'" in str(err.value)


def test_map_boxes_through_flip_and_permutation():
    src = np.eye(4)
    flip_x = np.diag([-1.0, 1, 1, 1])
    flip_x[0, 3] = 9  # new index i' = 9 - i on a 10-voxel axis
    assert map_boxes(np.array([[1, 2, 3, 4, 5, 5]]), src, flip_x, (10, 8, 6)).tolist() == [[5, 2, 3, 8, 5, 5]]
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    assert map_boxes(np.array([[1, 2, 3, 4, 5, 5]]), src, swap, (8, 10, 6)).tolist() == [[2, 1, 3, 5, 4, 5]]


def test_boxes_follow_orientation_to_the_same_voxels():
    shape = (10, 8, 6)
    data = {"image": _ras_volume(shape), "boxes": [[1, 2, 3, 4, 5, 5]], "box_labels": [7]}
    volume = np.arange(np.prod(shape)).reshape(shape)
    pipeline = Compose(
        [
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            orientationd("image", "LPS"),
            FileBoxesToArrayd("boxes", ref_key="image"),
        ]
    )
    out = pipeline(data)
    box = out["boxes"][0].tolist()
    # RAS -> LPS flips the first two axes: the box selects the same voxel values as before.
    region = out["image"][0][box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1]
    original = volume[1:5, 2:6, 3:6]
    assert sorted(region.flatten().tolist()) == sorted(original.flatten().tolist())
    assert out["box_labels"].tolist() == [7]


def test_labels_are_checked():
    data = {"image": _ras_volume()[None], "boxes": [[1, 2, 3, 4, 5, 5]], "box_labels": [0]}
    with pytest.raises(ValueError, match="positive integer label"):
        FileBoxesToArrayd("boxes")(data)
    data["box_labels"] = None
    assert FileBoxesToArrayd("boxes")(data)["box_labels"].tolist() == [1]


def test_orientationd_none_is_identity():
    assert type(orientationd("image", "none")).__name__ == "Identityd"
    assert type(orientationd("image", None)).__name__ == "Identityd"


def test_file_points_follow_orientation_and_resampling():
    """Points in file voxel indices keep their world position through Orientationd (LPS flips x and y of this RAS
    volume) and 1 mm resampling: voxel index i at spacing s lands on (i + 0.5) * s - 0.5."""
    from common.methods.sam3d_adapter.resample import ScaleResampled
    from common.transforms.geometry import FilePointsToArrayd

    image = _ras_volume()  # (10, 8, 6) at (2, 3, 4) mm
    data = Compose(
        [
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            orientationd("image", "LPS"),
            ScaleResampled("image", target_spacing=(1.0, 1.0, 1.0)),
            FilePointsToArrayd("points", ref_key="image"),
        ]
    )({"image": image, "points": [[1, 2, 3], [9, 0, 5]]})
    expected = [
        [(9 - 1 + 0.5) * 2 - 0.5, (7 - 2 + 0.5) * 3 - 0.5, (3 + 0.5) * 4 - 0.5],
        [(9 - 9 + 0.5) * 2 - 0.5, (7 - 0 + 0.5) * 3 - 0.5, (5 + 0.5) * 4 - 0.5],
    ]
    assert data["image"].shape[1:] == (20, 24, 24)
    np.testing.assert_allclose(data["points"].numpy(), expected, atol=1e-4)
    world = lambda affine, p: (np.asarray(affine) @ np.append(p, 1.0))[:3]  # noqa: E731
    np.testing.assert_allclose(
        world(data["image"].affine, data["points"][0].numpy()),
        world(image.meta["original_affine"], [1, 2, 3]),
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "points, message",
    [
        ([[10, 0, 0]], r"point #0 \[10.0, 0.0, 0.0\] lies outside"),
        ([[1, 2]], "expected a list of"),
        ([[1, float("nan"), 2]], "finite"),
    ],
)
def test_file_points_errors(points, message):
    from common.transforms.geometry import FilePointsToArrayd

    image = EnsureChannelFirstd("image", channel_dim="no_channel")({"image": _ras_volume()})["image"]
    with pytest.raises(ValueError, match=message):
        FilePointsToArrayd("points")({"image": image, "points": points})
