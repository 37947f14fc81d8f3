"""Simulated outside producers for demos and tests: a hospital upload, a production model with
realistic mistakes, and annotators who refine labels.

Every function returns a wire-format v1 message as a plain dict (SPEC §3) built from the ground
truth that :mod:`surgflow.data.synthetic` writes beside each video; nothing here talks to Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from surgflow.data.synthetic import SyntheticVideo


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def video_event(video: SyntheticVideo, procedure: str, recorded_at: datetime) -> dict:
    """The hospital upload of one synthetic video."""
    return {
        "schema": "surgflow.video/v1",
        "event_id": f"video-{video.video_id}",
        "video_id": video.video_id,
        "uri": video.path.resolve().as_uri(),
        "procedure": procedure,
        "source": video.hospital,
        "recorded_at": _ts(recorded_at),
    }


def model_output(
    video: SyntheticVideo,
    procedure: str,
    labels: Sequence[str],
    model: tuple[str, int],
    produced_at: datetime,
    seed: int,
    error_rate: float = 0.25,
) -> dict:
    """An inference message from a production model that is mostly right.

    Phase boundaries are shifted by up to two seconds, confidences are high where the model is
    right, and with probability ``error_rate`` a phase is predicted as a neighbouring phase with
    low confidence, as a real phase model confuses adjacent phases.
    """
    rng = np.random.default_rng(seed)
    jitter = int(2 * video.fps)
    segments, cursor = [], 0
    min_len = max(1, int(video.fps) // 2)
    for i, seg in enumerate(video.segments):
        if i == len(video.segments) - 1:
            end = video.num_frames
        else:
            end = seg["end_frame"] + int(rng.integers(-jitter, jitter + 1))
            end = min(end, video.num_frames - min_len)
            if end - cursor < min_len:
                continue  # a phase shorter than the jitter is swallowed by its neighbour
        label, confidence = seg["label"], float(rng.uniform(0.8, 0.99))
        if rng.random() < error_rate:
            idx = labels.index(label)
            label = labels[min(len(labels) - 1, max(0, idx + int(rng.choice([-1, 1]))))]
            confidence = float(rng.uniform(0.3, 0.55))
        segments.append(
            {
                "start_frame": cursor,
                "end_frame": end,
                "label": label,
                "confidence": round(confidence, 3),
            }
        )
        cursor = end
    return {
        "schema": "surgflow.inference/v1",
        "event_id": f"inf-{model[0]}-{model[1]}-{video.video_id}",
        "video_id": video.video_id,
        "procedure": procedure,
        "model": {"name": model[0], "version": model[1]},
        "produced_at": _ts(produced_at),
        "segments": segments,
    }


def annotation(
    video: SyntheticVideo,
    annotator: str,
    produced_at: datetime,
    start_frame: int = 0,
    end_frame: int | None = None,
    task_id: str | None = None,
    privacy: bool = False,
) -> dict:
    """An annotator's refined labels for ``[start_frame, end_frame)``: the ground truth there
    (with ``privacy``, the privacy track's too: InBody and OutOfBody ranges)."""
    end_frame = video.num_frames if end_frame is None else end_frame
    truth = [*video.segments, *(video.privacy if privacy else ())]
    segments = [
        {
            "start_frame": max(s["start_frame"], start_frame),
            "end_frame": min(s["end_frame"], end_frame),
            "label": s["label"],
        }
        for s in truth
        if s["end_frame"] > start_frame and s["start_frame"] < end_frame
    ]
    segments.sort(key=lambda s: (s["start_frame"], s["end_frame"]))
    scope = (
        "full"
        if (start_frame, end_frame) == (0, video.num_frames)
        else f"{start_frame}-{end_frame}"
    )
    msg = {
        "schema": "surgflow.annotation/v1",
        "event_id": f"ann-{annotator}-{video.video_id}-{scope}",
        "video_id": video.video_id,
        "annotator": annotator,
        "produced_at": _ts(produced_at),
        "segments": segments,
    }
    if task_id:
        msg["task_id"] = task_id
    return msg
