"""Building wire events from synthetic videos, an independent per-frame oracle, CLI calls."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from surgflow.data.synthetic import SyntheticVideo

SURGFLOW = str(Path(sys.executable).with_name("surgflow"))
T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def video_event(v: SyntheticVideo, event_id: str | None = None, **over) -> dict:
    return {"schema": "surgflow.video/v1", "event_id": event_id or f"vid-{v.video_id}",
            "video_id": v.video_id, "uri": v.path.as_uri(), "procedure": "cholecystectomy",
            "source": v.hospital, "recorded_at": "2026-11-20T10:00:00Z"} | over


def inference_event(v: SyntheticVideo, event_id: str, minutes: int, confidences=None,
                    version: int = 3, segments=None) -> dict:
    segs = segments if segments is not None else v.segments
    confs = confidences or [0.9] * len(segs)
    return {"schema": "surgflow.inference/v1", "event_id": event_id, "video_id": v.video_id,
            "procedure": "cholecystectomy",
            "model": {"name": "cholecystectomy-phase", "version": version},
            "produced_at": (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
            "segments": [s | {"confidence": c} for s, c in zip(segs, confs, strict=True)]}


def annotation_event(v: SyntheticVideo, event_id: str, minutes: int, segments,
                     task_id: str | None = None) -> dict:
    e = {"schema": "surgflow.annotation/v1", "event_id": event_id, "video_id": v.video_id,
         "annotator": "annotator-7", "produced_at": (T0 + timedelta(minutes=minutes)).isoformat(),
         "segments": [dict(s) for s in segments]}
    if task_id:
        e["task_id"] = task_id
    return e


def expected_show(videos: list[SyntheticVideo], label_events: list[dict]) -> dict:
    """What `data show` must say, computed frame by frame (no interval arithmetic)."""
    frames = {v.video_id: v.num_frames for v in videos}
    label = {vid: np.full(n, None, dtype=object) for vid, n in frames.items()}
    key = {vid: np.full(n, -1.0) for vid, n in frames.items()}
    prov = {vid: np.full(n, None, dtype=object) for vid, n in frames.items()}
    seen = set()
    for e in label_events:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        human = e["schema"] == "surgflow.annotation/v1"
        t = datetime.fromisoformat(e["produced_at"].replace("Z", "+00:00")).timestamp()
        k = (1e12 if human else 0.0) + t
        for s in e["segments"]:
            for f in range(s["start_frame"], s["end_frame"]):
                if k > key[e["video_id"]][f]:
                    key[e["video_id"]][f] = k
                    label[e["video_id"]][f] = s["label"]
                    prov[e["video_id"]][f] = "human" if human else "model"
    label_frames: Counter = Counter()
    prov_frames: Counter = Counter({"human": 0, "model": 0})
    for vid in frames:
        label_frames.update(x for x in label[vid] if x is not None)
        prov_frames.update(x for x in prov[vid] if x is not None)
    return {"videos": len(videos), "sources": dict(Counter(v.hospital for v in videos)),
            "events_applied": len(seen), "label_frames": dict(label_frames),
            "provenance_frames": dict(prov_frames)}


def cli(*args: str, check: bool = True, timeout: float = 180,
        env: dict | None = None) -> tuple[int, object, str]:
    """Run `surgflow ARGS --json`; return (exit code, parsed stdout or None, stderr)."""
    proc = subprocess.run([SURGFLOW, *args, "--json"], capture_output=True, text=True,
                          timeout=timeout, env=env)
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    if check and proc.returncode != 0:
        raise AssertionError(f"surgflow {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc.returncode, out, proc.stderr
