"""The inference service on loopback against a real registry (embedded MLflow) and broker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import numpy as np

from surgflow import tracking
from surgflow.config import Settings, get_settings
from surgflow.data.taxonomy import CHOLEC80_PHASES
from surgflow.registry import ModelRegistry, model_name

NAME = model_name("cholecystectomy")
TOKEN = "serving-test-token-0123456789"


def serving_settings(root: Path, bootstrap: str, roots: list[Path], **over) -> Settings:
    """Settings of a service whose home is ``root/home``, on ``bootstrap`` with its own prefix."""
    return get_settings(home=root / "home", kafka_bootstrap=bootstrap,
                        topic_prefix=f"s{uuid.uuid4().hex[:10]}.", video_roots=roots,
                        api_token=TOKEN, topic_partitions=3, **over)


def register_bundle(settings: Settings, bundle_dir: Path, recipe_name: str = "tiny",
                    procedure: str = "cholecystectomy", recipe: dict | None = None) -> int:
    """Register ``bundle_dir`` as a new version (its own MLflow run); returns the version."""
    client = tracking.client(settings)
    run = client.create_run(tracking.experiment_id(client, f"surgflow/{procedure}", settings))
    mv = ModelRegistry(settings).register(
        procedure=procedure, bundle_dir=bundle_dir, run_id=run.info.run_id,
        recipe_name=recipe_name, recipe=recipe or {"name": recipe_name}, recipe_path=None,
        dataset_versions=[f"{procedure}@1"], code_version="test", metrics={})
    return mv.version


def promote(settings: Settings, version: int) -> dict:
    return ModelRegistry(settings).promote(NAME, version, force=True,
                                           reason="serving test", by="test")


def http(url: str, token: str | None = TOKEN, timeout: float = 120) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout)


def truth(video_path: Path) -> np.ndarray:
    """Per-frame ground-truth class indices of a synthetic video."""
    meta = json.loads(Path(video_path).with_suffix(".segments.json").read_text())
    labels = np.full(meta["num_frames"], -1, dtype=np.int64)
    for s in meta["segments"]:
        labels[s["start_frame"]:s["end_frame"]] = CHOLEC80_PHASES.index(s["label"])
    return labels


def frames_of(segments: list[dict], num_frames: int) -> np.ndarray:
    """Per-frame class indices from segments, checking they tile ``[0, num_frames)``."""
    labels = np.full(num_frames, -1, dtype=np.int64)
    pos = 0
    for i, s in enumerate(segments):
        assert s["start_frame"] == pos, f"segment {i} starts at {s['start_frame']}, not {pos}"
        assert s["end_frame"] > s["start_frame"]
        if i:
            assert s["label"] != segments[i - 1]["label"], f"segments {i - 1} and {i} agree"
        labels[s["start_frame"]:s["end_frame"]] = CHOLEC80_PHASES.index(s["label"])
        pos = s["end_frame"]
    assert pos == num_frames
    return labels


def read_topic(bootstrap: str, topic: str, *, expect: int = 1, timeout_s: float = 20.0) -> list:
    """Every record of ``topic`` from the beginning, waiting until at least ``expect`` arrived."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
            if len(out) >= expect:
                # one more poll: anything sent in the same batch as the last one
                for records in consumer.poll(timeout_ms=300).values():
                    out.extend(records)
                break
        return out
    finally:
        consumer.close()
