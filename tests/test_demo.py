"""`surgflow demo` end to end: real embedded broker, real Prefect server, real Dask cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.integration
def test_demo_runs_the_whole_loop(tmp_path: Path, prefect_server: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGFLOW_")}
    env |= {"SURGFLOW_HOME": str(tmp_path / "home"), "PREFECT_API_URL": prefect_server}
    cmd = [sys.executable, "-m", "surgflow", "demo", "--duration", "24", "--json"]
    try:
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout)
    finally:
        subprocess.run([sys.executable, "-m", "surgflow", "broker", "stop", "--json"],
                       cwd=tmp_path, env=env, capture_output=True, timeout=60)

    n = out["videos"]
    assert n == 10 and out["published"] == {"videos": 10, "inference": 10, "annotations": 5}
    first, second = out["feedback_first"], out["feedback_second"]
    assert first["consumed"] == 25 and first["dead_lettered"] == 0
    assert first["versions_created"] == [{"dataset": "cholecystectomy", "version": 1}]
    assert first["tasks_created"] > 0, "the simulated model makes low-confidence mistakes"
    assert out["tasks_answered"] == first["tasks_created"] == second["consumed"]
    assert second["versions_created"] == [{"dataset": "cholecystectomy", "version": 2}]

    show = subprocess.run(
        [sys.executable, "-m", "surgflow", "data", "show", "cholecystectomy", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    data = json.loads(show.stdout)
    total_frames = sum(
        json.loads(p.read_text())["num_frames"]
        for p in (tmp_path / "home" / "demo" / "videos").glob("*.segments.json")
    )
    assert sum(data["label_frames"].values()) == total_frames, "every frame has a label"
    assert data["provenance_frames"]["human"] > total_frames // 2 - total_frames // 10
    assert data["splits"] == {"train": 6, "val": 2, "test": 2}

    training = out["training"]
    assert training["status"] == "succeeded"
    val = training["result"]["stages"]["clip"]["final"]["val"]
    assert val["accuracy"] > 2 / 7, "a trained model beats chance on held-out videos"
