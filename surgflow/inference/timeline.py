"""A video's phase timeline: per-frame labels and confidences, their segments and key moments.

Pure functions over arrays. The chain predicts once per second; second ``i`` covers the video's
frames ``[i*step, (i+1)*step)`` with ``step = frame_step(fps, 1.0)`` (the per-second clip of
training is centred on frame ``i*step``), so a per-second prediction maps to ``step`` frames,
the last second cut at the video's end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


@dataclass(frozen=True)
class Timeline:
    """Per-frame class indices ``labels`` (int64) and ``confidence`` (float32 softmax max)."""

    labels: np.ndarray
    confidence: np.ndarray

    def __post_init__(self) -> None:
        if self.labels.shape != self.confidence.shape or self.labels.ndim != 1:
            raise ValueError(f"labels {self.labels.shape} and confidence "
                             f"{self.confidence.shape} must be 1-D arrays of equal length")

    @classmethod
    def from_logits(cls, logits: np.ndarray, num_frames: int, step: int) -> Timeline:
        """The timeline of per-second logits ``L×C`` over a ``num_frames`` video."""
        probs = softmax(logits)
        return cls.from_seconds(probs.argmax(-1), probs.max(-1), num_frames, step)

    @classmethod
    def from_seconds(cls, labels: np.ndarray, confidence: np.ndarray, num_frames: int,
                     step: int) -> Timeline:
        """Second ``i``'s values for frames ``[i*step, (i+1)*step)``, cut at ``num_frames``."""
        need = -(-num_frames // step)
        if len(labels) != need or len(confidence) != need:
            raise ValueError(f"{num_frames} frames at {step} frames per second need {need} "
                             f"per-second values, got {len(labels)} and {len(confidence)}")
        return cls(np.repeat(np.asarray(labels, dtype=np.int64), step)[:num_frames],
                   np.repeat(np.asarray(confidence, dtype=np.float32), step)[:num_frames])

    @property
    def num_frames(self) -> int:
        return len(self.labels)

    def _runs(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and end frame of each run of equal labels."""
        n = len(self.labels)
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, self.labels[1:] != self.labels[:-1]])
        return starts, np.r_[starts[1:], n]

    def segments(self, label_names: Sequence[str]) -> list[dict[str, Any]]:
        """Runs of one label covering ``[0, num_frames)``: no gaps, no overlaps, adjacent labels
        differ; ``confidence`` is the mean over the run's frames."""
        starts, ends = self._runs()
        sums = np.r_[0.0, np.cumsum(self.confidence, dtype=np.float64)]
        return [{"start_frame": int(a), "end_frame": int(b),
                 "label": label_names[int(self.labels[a])],
                 "confidence": round(float((sums[b] - sums[a]) / (b - a)), 6)}
                for a, b in zip(starts, ends, strict=True)]

    def key_moments(self, label_names: Sequence[str], fps: float) -> list[dict[str, Any]]:
        """Every phase transition: the first frame of the new phase and its time."""
        starts, _ = self._runs()
        return [{"frame": int(f), "time_s": round(float(f) / fps, 3),
                 "from_label": label_names[int(self.labels[f - 1])],
                 "to_label": label_names[int(self.labels[f])]}
                for f in starts[1:]]


@dataclass(frozen=True)
class Analysis:
    """A whole video through a chain."""

    fps: float
    num_frames: int
    step: int  # source frames per prediction (one prediction per second)
    timeline: Timeline  # the chain's output
    encoder_timeline: Timeline  # the encoder head alone (= timeline without a temporal stage)
    seconds: float  # wall time of the analysis
    timings: dict[str, float] = field(default_factory=dict)  # where the wall time went

    @property
    def second_labels(self) -> np.ndarray:
        """The chain's class index for each second."""
        return self.timeline.labels[:: self.step]
