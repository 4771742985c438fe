"""MONAI Label request prompts -> bundle inputs, the stack embedding cache, and bundle discovery (no server)."""

from __future__ import annotations

import pytest
import torch

from common.label.cache import StackEmbeddingCache, cache_image_embeddings
from common.label.request_prompts import request_prompts, roi_to_box

BOXES = ("boxes", "box_labels")
POINTS_ONLY = ("points",)
POINTS = ("points", "point_labels")


def test_roi_from_slicer_is_sorted_per_axis():
    # Slicer rounds the ROI's RAS corners to IJK: an axis flipped between RAS and the file comes reversed
    assert roi_to_box([30, 68, 67, 47, 2, 19]) == [30, 47, 2, 68, 67, 19]
    assert roi_to_box([30.4, 68.6, 47, 67, 2, 19]) == [30, 47, 2, 69, 67, 19]
    with pytest.raises(ValueError, match="6 voxel indices"):
        roi_to_box([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"one flat list \[i0, i1, j0, j1, k0, k1\], not pairs"):
        roi_to_box([[60, 60], [100, 100], [10, 12]])


def test_box_model_takes_the_roi():
    assert request_prompts({"roi": [1, 5, 2, 6, 3, 7], "foreground": [[1, 1, 1]]}, BOXES, "medsam") == {
        "boxes": [[1, 2, 3, 5, 6, 7]],
        "box_labels": [1],
    }
    with pytest.raises(ValueError, match="medsam is box-prompted"):
        request_prompts({"foreground": [[1, 2, 3]]}, BOXES, "medsam")


def test_click_models():
    request = {"foreground": [[1, 2, 3], [4, 5, 6]], "background": [[7, 8, 9]]}
    assert request_prompts(request, POINTS, "msa") == {
        "points": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        "point_labels": [1, 1, 0],
    }
    assert request_prompts({"foreground": [[1, 2, 3]], "background": []}, POINTS_ONLY, "3dsam") == {
        "points": [[1, 2, 3]]
    }
    with pytest.raises(ValueError, match="foreground clicks only; remove the 1 background"):
        request_prompts(request, POINTS_ONLY, "3dsam")
    with pytest.raises(ValueError, match="at least one foreground click"):
        request_prompts({"background": [[7, 8, 9]]}, POINTS, "msa")
    with pytest.raises(ValueError, match=r"voxel index \[i, j, k\]"):
        request_prompts({"foreground": [[1, 2]]}, POINTS, "msa")


class CountingEncoder:
    def __init__(self):
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return images.mean(dim=0, keepdim=True).expand(len(images), -1, -1, -1) * 2  # mixes the stack, like MSA


def test_stack_cache_keys_the_whole_stack():
    encoder = CountingEncoder()
    cache = StackEmbeddingCache(encoder, max_bytes=10**6)
    a, b = torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)
    first = cache(torch.cat([a, b]))
    again = cache(torch.cat([a, b]))
    other = cache(torch.cat([a, torch.zeros_like(b)]))  # same first slice, different neighbour
    assert encoder.calls == 2 and (cache.hits, cache.misses) == (1, 2)
    torch.testing.assert_close(again, first)
    assert not torch.equal(other[0], first[0])


def test_stack_cache_memory_bound_drops_least_recent():
    encoder = CountingEncoder()
    one = 4 * 1 * 1 * 8 * 8  # bytes of one (1, 1, 8, 8) float embedding
    cache = StackEmbeddingCache(encoder, max_bytes=2 * one)
    x, y, z = (torch.full((1, 1, 8, 8), float(v)) for v in (1, 2, 3))
    cache(x), cache(y), cache(x), cache(z)  # x used last before z arrives: y is dropped
    assert cache.stored_bytes <= 2 * one and encoder.calls == 3
    cache(x)
    assert encoder.calls == 3
    cache(y)
    assert encoder.calls == 4


def test_cache_wraps_encode_once_and_skips_models_without_it():
    class WithEncode(torch.nn.Module):
        def encode(self, images):
            return images + 1

    model = WithEncode()
    cache = cache_image_embeddings(model, 10**6)
    assert isinstance(cache, StackEmbeddingCache) and cache_image_embeddings(model, 10**6) is cache
    torch.testing.assert_close(model.encode(torch.zeros(1, 1, 2, 2)), torch.ones(1, 1, 2, 2))
    assert cache_image_embeddings(torch.nn.Linear(2, 2), 10**6) is None


def test_find_bundles(tmp_path):
    app = pytest.importorskip("common.label.app", reason="needs the monailabel extra")
    for name, files in {
        "with_weights": ["configs/inference.json", "models/model.pt"],
        "no_weights": ["configs/inference.json"],
    }.items():
        for file in files:
            (tmp_path / name / file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / file).write_text("{}")
    assert app.find_bundles(tmp_path) == {"with_weights": str(tmp_path / "with_weights")}
    with pytest.raises(FileNotFoundError, match=r"bundle 'no_weights': .*models/model.pt not found"):
        app.find_bundles(tmp_path, "with_weights, no_weights")
    with pytest.raises(FileNotFoundError, match="bundles_dir not found"):
        app.find_bundles(tmp_path / "missing")


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"roi": [1, float("inf"), 1, 9, 1, 9]}, "finite numbers"),
        ({"roi": [1, float("nan"), 1, 9, 1, 9]}, "finite numbers"),
        ({"roi": ["1", "9", "1", "9", "1", "9"]}, "finite numbers"),
        ({"roi": 5}, "'roi' must be a list"),
        ({"roi": [True, 9, 1, 9, 1, 9]}, "finite numbers"),
        ({"foreground": "60,50,15"}, "'foreground' must be a list of clicks"),
        ({"foreground": [[60, 50, 15]] * 101}, "holds 101 clicks; at most 100"),
        ({"foreground": [[60, None, 15]]}, "finite numbers"),
    ],
)
def test_malformed_prompts_are_value_errors_naming_the_key(request_, message):
    keys = ("boxes", "box_labels") if "roi" in request_ else ("points",)
    with pytest.raises(ValueError, match=message):
        request_prompts(request_, keys, "model")
