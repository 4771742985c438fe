"""Video files as clips of frames (PyAV, the optional extra ``video``: ``pip install "sam-medical-bundles[video]"``).

A video becomes one clip named after the file's stem; frame ``k`` (0-based, decoding order) is named ``f"{k + 1:05d}"``
(the SUN-SEG toolbox orders numbered names), so predictions land in ``<output>/<stem>/00001.png ...`` and external
maps for the video are read from ``<maps>/<stem>/00001.png ...``. Frames are decoded forward as they are asked for
(a clip is read in order), so memory holds one frame, not the video.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

from common.errors import InputNotFoundError, InvalidInputError

__all__ = ["LoadFramed", "VideoFrames", "frame_name", "video_datalist"]


def frame_name(index: int) -> str:
    """Name of 0-based frame ``index`` of a video: ``00001`` for the first."""
    return f"{index + 1:05d}"


def _av():
    try:
        import av
    except ImportError as err:
        raise InvalidInputError('video input needs PyAV: pip install "sam-medical-bundles[video]" (av)') from err
    return av


class VideoFrames:
    """Frames of one video file as RGB ``(H, W, 3)`` uint8 arrays: :meth:`frame` decodes forward from the last frame
    read and reopens the file only to go back. ``len`` counts the decodable frames (one decoding pass, on first use
    only: reading frames in order never needs it)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        if not Path(self.path).is_file():
            raise InputNotFoundError(f"video not found: {self.path}")
        av = _av()
        try:
            with av.open(self.path) as container:
                if not container.streams.video:
                    raise InvalidInputError(f"{self.path}: no video stream")
        except av.FFmpegError as err:
            raise InvalidInputError(f"{self.path}: not a readable video ({err})") from err
        self._count: int | None = None
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._next = 0

    def __len__(self) -> int:
        if self._count is None:
            with _av().open(self.path) as container:
                self._count = sum(1 for _ in container.decode(video=0))
            if self._count == 0:
                raise InvalidInputError(f"{self.path}: no decodable frames")
        return self._count

    def _reopen(self) -> None:
        self.close()
        container: Any = _av().open(self.path)
        self._container, self._frames = container, iter(container.decode(video=0))
        self._next = 0

    def frame(self, index: int) -> np.ndarray:
        if index < 0:
            raise IndexError(f"{self.path}: frame {index} is negative")
        if self._frames is None or index < self._next:
            self._reopen()
        for decoded in self._frames or ():
            self._next += 1
            if self._next - 1 == index:
                return decoded.to_ndarray(format="rgb24")
        raise IndexError(f"{self.path}: no frame {index} (the video has {self._next} decodable frames)")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None


def video_datalist(video: str, maps_dir: str | None = None) -> list[dict]:
    """One item per frame: ``{"image": video, "frame_index", "clip": <stem>, "frame": <name>}`` plus
    ``"mask_prompt"`` where ``maps_dir/<stem>/<name>.png`` exists."""
    frames = VideoFrames(video)
    count = len(frames)
    frames.close()
    clip = Path(video).stem
    items = []
    for k in range(count):
        item = {"image": str(video), "frame_index": k, "clip": clip, "frame": frame_name(k)}
        if maps_dir is not None and (Path(maps_dir) / clip / f"{frame_name(k)}.png").is_file():
            item["mask_prompt"] = str(Path(maps_dir) / clip / f"{frame_name(k)}.png")
        items.append(item)
    return items


class LoadFramed(MapTransform):
    """A frame ``(3, X, Y)`` (RGB; ``(1, X, Y)`` for grey files) float 0..255 MetaTensor from an image file (MONAI
    ``LoadImage``, Pillow) or, when the item has ``index_key``, from that frame of a video (meta ``filename_or_obj``
    = ``<video>/<frame name>.png``, so outputs are named after the frame; ``spatial_shape`` ``(X, Y)``)."""

    def __init__(self, keys: KeysCollection = "image", index_key: str = "frame_index") -> None:
        super().__init__(keys)
        self.index_key = index_key
        self._image = LoadImage(reader="PILReader", image_only=True, ensure_channel_first=True)
        self._videos: dict[str, VideoFrames] = {}

    def _video_frame(self, path: str, index: int) -> MetaTensor:
        if path not in self._videos:
            for old in self._videos.values():
                old.close()
            self._videos = {path: VideoFrames(path)}
        rgb = self._videos[path].frame(index)  # (H, W, 3)
        array = torch.as_tensor(rgb).permute(2, 1, 0).float()  # (3, X, Y)
        meta = {
            "filename_or_obj": str(Path(path) / f"{frame_name(index)}.png"),
            "spatial_shape": np.array(array.shape[1:]),
            "original_channel_dim": 0,
        }
        return MetaTensor(array, affine=torch.eye(3, dtype=torch.float64), meta=meta)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            if d.get(self.index_key) is not None:
                d[key] = self._video_frame(str(d[key]), int(d[self.index_key]))
            else:
                d[key] = self._image(d[key])
            if d[key].ndim != 3 or d[key].shape[0] not in (1, 3):
                raise InvalidInputError(f"'{key}': expected an RGB or grey frame, got shape {tuple(d[key].shape)}")
        return d
