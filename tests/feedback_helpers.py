"""Building wire events from synthetic videos, an independent per-frame oracle, follow-mode
consumers as processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from surgflow.config import get_settings
from surgflow.data.synthetic import SyntheticVideo
from surgflow.feedback.checkpoint import Checkpoint
from surgflow.feedback.client import Publisher
from surgflow.feedback.schemas import INPUT_TOPICS
from tests.cli_helpers import run_cli, start_cli

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


FOLLOW_LABELS = ("Preparation", "CalotTriangleDissection", "ClippingCutting",
                 "GallbladderDissection")


def label_stream(corpus, n_labels: int, seed: int) -> list[tuple[str, dict]]:
    """Videos first, then a shuffled mix of model and human labels with distinct times."""
    rng = random.Random(seed)
    out = [("video", video_event(v)) for v in corpus]
    minutes = rng.sample(range(10 * n_labels), n_labels)
    for i in range(n_labels):
        v = rng.choice(corpus)
        a = rng.randrange(0, v.num_frames - 2)
        b = rng.randrange(a + 1, min(v.num_frames, a + 120) + 1)
        seg = {"start_frame": a, "end_frame": b, "label": rng.choice(FOLLOW_LABELS)}
        if rng.random() < 0.3:
            out.append(("annotation", annotation_event(v, f"a{i}", minutes[i], [seg])))
        else:
            out.append(("inference", inference_event(v, f"m{i}", minutes[i],
                                                     confidences=[round(rng.random(), 2)],
                                                     segments=[seg])))
    return out


def produce(stream, pace_s: float = 0.0) -> None:
    with Publisher.from_settings(get_settings()) as pub:
        for i, (kind, event) in enumerate(stream):
            pub.publish(kind, event)
            if pace_s and i % 10 == 9:
                pub.flush()
                time.sleep(pace_s)
        pub.flush()


_RUNNING: list[subprocess.Popen] = []  # the follow-mode consumers tests started
_LOGS: dict[int, Path] = {}  # their stderr logs, by pid


def start_follow(log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "ab") as err:  # the child keeps its own copy of the descriptor
        proc = start_cli("feedback", "run", "--max-events", "20", "--max-seconds", "0.3",
                         *extra, json=True, stdout=subprocess.PIPE, stderr=err, text=True)
    _RUNNING.append(proc)
    _LOGS[proc.pid] = log
    return proc


def end_follow_consumers() -> None:
    """Kill the follow-mode consumers a test left running (it failed before stopping them)."""
    while _RUNNING:
        proc = _RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def consumed(home: Path, cluster_id: str, prefix: str) -> int:
    """Messages made durable so far: offsets are contiguous from 0, so the sum of positions."""
    topics = {prefix + t for t in INPUT_TOPICS}
    return sum(off for key, off in Checkpoint(home).positions(cluster_id).items()
               if key.rpartition(":")[0] in topics)


def wait_consumed(home, cluster_id, prefix, total, timeout_s=90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while consumed(home, cluster_id, prefix) < total:
        assert time.monotonic() < deadline, (
            f"only {consumed(home, cluster_id, prefix)} of {total} consumed")
        time.sleep(0.2)


def stop_follow(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    log = _LOGS.get(proc.pid)
    tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
    assert proc.returncode == 0, f"follow exited {proc.returncode}; its log ends:\n{tail}"
    return json.loads(out)


def once_reference(stream, tmp_path: Path, name: str) -> dict:
    """`data show` of an uninterrupted --once run over the same events in a fresh home."""
    home = tmp_path / name
    home.mkdir()
    env = os.environ | {"SURGFLOW_HOME": str(home),
                        "SURGFLOW_TOPIC_PREFIX": os.environ["SURGFLOW_TOPIC_PREFIX"] + name + "."}
    old = dict(os.environ)
    os.environ.update(env)
    try:
        produce(stream)
    finally:
        os.environ.clear()
        os.environ.update(old)
    run_cli("feedback", "run", "--once", env=env, json=True)
    return run_cli("data", "show", "cholecystectomy", env=env, json=True).data
