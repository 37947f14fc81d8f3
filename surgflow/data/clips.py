"""The clip dataset: a :class:`~surgflow.data.frames.ClipSource`'s clips as torch tensors.

Decoding (readers, proxies, centre crop) is :mod:`surgflow.data.frames`; this module turns the
decoded uint8 frames into ``(C, T, H, W)`` tensors, normalised here or later on the device
(:func:`normalise`, which the exported encoder graph applies too).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from surgflow.data.clip_sampling import ClipSpec, frame_step
from surgflow.data.frames import ClipSource, ClipVideo, FrameReader
from surgflow.errors import BadInput

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def to_tensor(
    frames: np.ndarray,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(T, H, W, C)`` uint8 to a ``(C, T, H, W)`` tensor: normalised floats of ``dtype``, or
    the raw uint8 values when ``dtype`` is ``torch.uint8`` (normalise later with
    :func:`normalise`, e.g. on the GPU, which moves a quarter of the bytes between processes)."""
    u = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    if dtype == torch.uint8:
        return u  # a view: collating into a batch makes the one copy that is needed
    out = torch.empty(u.shape, dtype=dtype)
    out.copy_(u)  # converts and transposes in one pass
    scale, shift = _affine(mean, std, dtype, out.device)
    return out.mul_(scale).add_(shift)


def normalise(
    clips: torch.Tensor,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    dtype: torch.dtype = torch.float32,
    channel_dim: int = -4,
) -> torch.Tensor:
    """uint8 clips to normalised floats, on the clips' device. Channels are at ``channel_dim``:
    -4 for clips ``(..., C, T, H, W)``, -3 for frames ``(..., C, H, W)``."""
    scale, shift = _affine(mean, std, dtype, clips.device)
    shape = (-1,) + (1,) * (-channel_dim - 1)
    return clips.to(dtype).mul_(scale.view(shape)).add_(shift.view(shape))


def _affine(mean: Sequence[float], std: Sequence[float], dtype: torch.dtype, device):
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).view(-1, 1, 1, 1).to(dtype=dtype, device=device)
    shift = (-m / s).view(-1, 1, 1, 1).to(dtype=dtype, device=device)
    return scale, shift


class ClipDataset(ClipSource, Dataset):
    """A :class:`~surgflow.data.frames.ClipSource` as a torch dataset.

    Items are dicts: ``clip`` (``(C, T, H, W)``, or ``(C, H, W)`` with ``frame_level``;
    normalised floats of ``dtype``, or raw uint8 with ``dtype=torch.uint8``), ``label`` (int),
    ``video_id``, ``start_frame``, ``end_frame`` (one past the last frame read), ``index``.
    Works with any sampler and with ``num_workers > 0``.
    """

    def __init__(
        self,
        videos: Sequence[ClipVideo],
        video: Sequence[int] | np.ndarray,
        start: Sequence[int] | np.ndarray,
        label: Sequence[int] | np.ndarray,
        spec: ClipSpec,
        *,
        frame_level: bool = False,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        dtype: torch.dtype = torch.float32,
        reader: FrameReader | None = None,
    ):
        super().__init__(videos, video, start, label, spec, reader=reader)
        if frame_level and spec.frames != 1:
            raise BadInput(f"frame_level needs a clip spec of 1 frame, got {spec.frames}")
        self.frame_level = frame_level
        self.mean, self.std, self.dtype = tuple(mean), tuple(std), dtype

    @classmethod
    def of(cls, clips: ClipSource, **kwargs) -> ClipDataset:
        """The dataset of ``clips`` (e.g. a video's per-second clips), with their reader."""
        return cls(clips.videos, clips.video, clips.start, clips.label, clips.spec,
                   reader=clips.reader, **kwargs)

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        video = self.videos[int(self.video[i])]
        numbers = self.frames_of(i)
        clip = to_tensor(self.read(i), self.mean, self.std, self.dtype)
        if self.frame_level:
            clip = clip[:, 0]
        return {"clip": clip, "label": int(self.label[i]), "video_id": video.video_id,
                "start_frame": int(numbers[0]), "end_frame": int(numbers[-1]) + 1, "index": i}


def iter_video(
    video: ClipVideo,
    *,
    fps: float | None,
    size: int,
    batch_frames: int = 64,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    reader: FrameReader | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """A whole video in order at ``fps``: ``(frame numbers, (N, C, H, W) tensor)`` batches.

    For per-second features pass ``fps=1``: frames ``0, step, 2*step, ...`` with ``step =
    round(video fps)``, read from the video's proxy when it has one for that rate.
    """
    reader = reader or FrameReader(max_open=1)
    step = frame_step(video.fps, fps)
    numbers = np.arange(0, video.num_frames, step, dtype=np.int64)
    for k in range(0, len(numbers), batch_frames):
        chunk = numbers[k : k + batch_frames]
        x = to_tensor(reader.frames(video, chunk, size), mean, std)  # (C, N, H, W)
        yield chunk, x.permute(1, 0, 2, 3).contiguous()
