"""Helpers for training tests: a SURGFLOW_HOME holding a small labelled dataset version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surgflow.data.splits import ids_filling_splits
from surgflow.data.synthetic import generate_video
from surgflow.training.recipe import Recipe, parse_recipe
from tests.dataset_helpers import import_labelled


def labelled_home(root: Path, *, n_train: int = 6, n_val: int = 2, duration_s: float = 20,
                  fps: int = 10, size: int = 64) -> Path:
    """``root/home`` with dataset ``cholecystectomy@1``: synthetic videos with human labels,
    ``n_train`` of them in the train split and ``n_val`` in val (ids chosen by their split)."""
    videos = []
    for i, vid in ids_filling_splits({"train": n_train, "val": n_val}, "case-{:04d}".format):
        path = root / "videos" / f"{vid}.mp4"
        generate_video(path, seed=i + 1, duration_s=duration_s, fps=fps, width=size,
                       height=size, gop=fps)
        videos.append(path)
    home = root / "home"
    result = import_labelled(home, [root], videos, "cholecystectomy", "hospital-a")
    assert result.version == 1, result
    return home


def tiny_recipe(**overrides: Any) -> Recipe:
    """A recipe that trains in seconds on 2 shared CPU cores."""
    base: dict[str, Any] = {
        "name": "tiny",
        "data": {"sources": ["cholecystectomy"], "min_confidence": None},
        "clip": {"frames": 1, "stride": 1, "fps": 2, "size": 32},
        "model": {"architecture": "tiny2d"},
        "optim": {"epochs": 3, "batch_size": 16, "lr": 0.01, "seed": 3},
        "resources": {"world_size": 2, "threads_per_rank": 1, "rendezvous_timeout_s": 60},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return parse_recipe(base)
