"""Per-video drift features: what one analysis of one video says about what the model saw.

From the segments of a ``surgflow.inference/v1`` event (SPEC §3), expanded to one value per
second (second ``i`` is the video's frame ``i*step``, :func:`surgflow.data.seconds.second_frames`,
the frame the chain predicted for):

- ``confidence``: the confidence of each second;
- ``phase_mix``: the predicted phase of each second (its shares);
- ``phase_duration``: the seconds of each run of one predicted phase.

From the registered video: ``resolution`` (``WxH``), ``fps``, and ``brightness``, the mean luma
of :data:`FRAMES` frames sampled evenly through the file, computed once per video content
(:class:`BrightnessCache`, keyed by the content's sha256).

:func:`video_features` is pure; only :func:`frame_lumas` and the cache touch files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from surgflow.data.seconds import second_frames
from surgflow.drift.stats import FEATURES, Distribution
from surgflow.errors import VideoError
from surgflow.storage import json_bytes, read_json, write_exclusive

#: frames sampled per video for its brightness
FRAMES = 8
#: ITU-R BT.601 luma weights of R, G, B
LUMA = np.array([0.299, 0.587, 0.114])


class VideoFacts(Protocol):
    """What the features read of a video (a :class:`~surgflow.data.registry.VideoRecord`, or
    a dataset version's snapshot of one)."""

    num_frames: int
    fps: float
    width: int
    height: int


def per_second(segments: Sequence[Mapping[str, Any]], fps: float,
               num_frames: int) -> tuple[list[str], np.ndarray]:
    """The label and confidence of each second the segments cover, in order."""
    segs = sorted(segments, key=lambda s: int(s["start_frame"]))
    frames = second_frames(fps, num_frames)
    if not segs or len(frames) == 0:
        return [], np.zeros(0)
    starts = np.array([int(s["start_frame"]) for s in segs])
    ends = np.array([int(s["end_frame"]) for s in segs])
    idx = np.searchsorted(starts, frames, side="right") - 1
    covered = (idx >= 0) & (frames < ends[np.clip(idx, 0, None)])
    idx = idx[covered]
    labels = [str(segs[i]["label"]) for i in idx]
    confidence = np.array([float(segs[i]["confidence"]) for i in idx])
    return labels, confidence


def runs(labels: Sequence[str]) -> list[int]:
    """The length of each run of equal consecutive labels."""
    out: list[int] = []
    for i, label in enumerate(labels):
        if i and label == labels[i - 1]:
            out[-1] += 1
        else:
            out.append(1)
    return out


def fps_text(fps: float) -> str:
    return f"{round(float(fps), 2):g}"


def video_features(segments: Sequence[Mapping[str, Any]], video: VideoFacts,
                   lumas: Sequence[float]) -> dict[str, Distribution]:
    """Every feature of one video analysed into ``segments`` (``start_frame``, ``end_frame``,
    ``label``, ``confidence``), with the ``lumas`` of its sampled frames; a feature the video
    has no value of (no second covered) is left out."""
    labels, confidence = per_second(segments, video.fps, video.num_frames)
    values: dict[str, Sequence[Any]] = {
        "confidence": confidence,
        "phase_mix": labels,
        "phase_duration": runs(labels),
        "resolution": [f"{video.width}x{video.height}"],
        "fps": [fps_text(video.fps)],
        "brightness": list(lumas),
    }
    assert values.keys() == FEATURES.keys(), "every registered feature is computed here"
    out = {name: Distribution.of_video(FEATURES[name], v) for name, v in values.items()}
    return {k: v for k, v in out.items() if v is not None}


def sample_frames(num_frames: int, n: int = FRAMES) -> np.ndarray:
    """``n`` frame indices spread evenly over the video (each the middle of its n-th)."""
    return np.unique(((np.arange(n) + 0.5) * num_frames / n).astype(np.int64))


def frame_lumas(path: str | Path, num_frames: int) -> list[float]:
    """The mean luma of each of :func:`sample_frames`'s frames of the video at ``path``;
    VideoError naming the file if they cannot be decoded."""
    from surgflow.data.video import open_reader

    reader = open_reader(path)
    try:
        frames = reader.get_batch(sample_frames(min(num_frames, len(reader)))).asnumpy()
    except Exception as e:  # decord's DECORDError and RuntimeError
        raise VideoError(str(path), f"frames for brightness cannot be decoded: {e}") from e
    return [round(float(v), 3) for v in (frames.astype(np.float64) @ LUMA).mean(axis=(1, 2))]


class BrightnessCache:
    """Sampled-frame lumas per video content, under ``SURGFLOW_HOME/drift/brightness/``."""

    def __init__(self, home: Path):
        self.root = Path(home) / "drift" / "brightness"

    def get(self, sha256: str, path: str | Path, num_frames: int) -> list[float]:
        """The lumas of the content ``sha256`` (the file at ``path``), decoded on first use."""
        file = self.root / f"{sha256}.json"
        stored = read_json(file)
        if isinstance(stored, dict) and "lumas" in stored:
            return [float(v) for v in stored["lumas"]]
        lumas = frame_lumas(path, num_frames)
        write_exclusive(file, json_bytes({"sha256": sha256, "frames": FRAMES, "lumas": lumas}))
        return lumas
