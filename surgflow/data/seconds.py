"""The per-second clip: one clip per second of a video, centred on that second's frame.

A chain predicts once per second: its temporal stage trains on the per-second features of
these clips, a bundle's golden inputs are these clips and the ONNX runner runs the encoder on
them, so all of them build the clips here. Second ``i`` is the video's frame ``i*step`` with
``step = frame_step(fps, 1.0)`` (:func:`second_frames`); a clip centred there is moved inside
the video where it would cross either end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from surgflow.data.clip_sampling import ClipSpec, clip_span, frame_step
from surgflow.data.frames import ClipSource, ClipVideo
from surgflow.errors import BadInput

if TYPE_CHECKING:
    from surgflow.data.views import ViewVideo


def per_second_clip(size: int) -> ClipSpec:
    """The clip of a per-second view: one frame each second, ``size`` px (a view on it labels
    every second of its videos)."""
    return ClipSpec(frames=1, stride=1, fps=1.0, size=size, hop=1)


def second_frames(fps: float, num_frames: int) -> np.ndarray:
    """The frame of each second of a ``num_frames`` video at ``fps``: ``0, step, 2*step, ...``."""
    return np.arange(0, num_frames, frame_step(fps, 1.0), dtype=np.int64)


def second_starts(video: ViewVideo | ClipVideo, clip: ClipSpec) -> np.ndarray:
    """Start frame of each second's clip of ``video``: centred on the second's frame, clamped
    to fit; BadInput naming the video when it is shorter than one clip."""
    step = frame_step(video.fps, clip.fps)
    span = clip_span(clip, step)
    if span > video.num_frames:
        raise BadInput(f"video {video.video_id!r} has {video.num_frames} frames, fewer than one "
                       f"clip of {span} frames")
    offset = (clip.frames // 2) * clip.stride * step
    return np.clip(second_frames(video.fps, video.num_frames) - offset, 0,
                   video.num_frames - span)


def second_clips(video: ViewVideo | ClipVideo, clip: ClipSpec) -> ClipSource:
    """One clip of ``clip`` per second of ``video`` (uint8 frames; the torch dataset of them is
    ``ClipDataset.of(second_clips(...))``)."""
    starts = second_starts(video, clip)
    if not isinstance(video, ClipVideo):
        video = ClipVideo.of(video.path, video, video.video_id)
    zeros = np.zeros(len(starts), dtype=np.int64)
    return ClipSource([video], zeros, starts, zeros, clip)
