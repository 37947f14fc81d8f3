"""Pinned dataset versions: the field suite the regression gate scores every model on.

``surgflow data pin DATASET@N --as field`` makes that immutable version its procedure's field
suite (a dataset is named after its procedure). The suite is the version's videos outside the
train split that hold human labels, each with its per-frame ground truth: the class index of
its human label, ``-1`` where the frame is unlabelled or only a model labelled it. Models never
grade themselves, and training data never grades a model.

The pin is a small mutable pointer, ``SURGFLOW_HOME/pins/<dataset>.json`` (``{as: {"dataset",
"version", "pinned_at"}}``), replaced atomically; the suite itself is read back from the
pinned version, which never changes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from surgflow.data.segments import ORDER, Relation, run_sql
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.data.versions import DatasetStore
from surgflow.errors import BadInput, NotFound
from surgflow.storage import json_bytes, locked, read_json, write_atomic

PinKind = Literal["field"]
PIN_KINDS: tuple[str, ...] = ("field",)
UNSCORED = -1


class NoFieldSuite(NotFound):
    """No field suite is pinned for a procedure."""


@dataclass(frozen=True)
class FieldVideo:
    """A field video and its per-frame human ground truth (``-1``: not scored)."""

    video_id: str
    path: str
    source: str
    fps: float
    num_frames: int
    split: str
    truth: np.ndarray


@dataclass(frozen=True)
class FieldSuite:
    """The human-labelled videos outside the train split of one pinned dataset version."""

    dataset: str
    version: int
    labels: tuple[str, ...]
    videos: list[FieldVideo]

    @property
    def ref(self) -> str:
        """``dataset@version``, as seals name their field suite."""
        return f"{self.dataset}@{self.version}"

    def describe(self) -> dict:
        sources = Counter(v.source for v in self.videos)
        return {
            "dataset": self.dataset, "version": self.version, "videos": len(self.videos),
            "video_ids": [v.video_id for v in self.videos],
            "sources": dict(sorted(sources.items())),
            "labelled_frames": int(sum(int((v.truth >= 0).sum()) for v in self.videos)),
        }


def suite_of(home: Path, dataset: str, version: int) -> FieldSuite:
    """The field suite ``dataset@version`` makes; NotFound for an unknown dataset or version,
    BadInput if it holds no human-labelled video outside the train split."""
    store = DatasetStore(home)
    store.manifest(dataset, version)  # NotFound naming what exists
    labels = ProcedureCatalog(home).get(dataset).labels
    index = {lbl: i for i, lbl in enumerate(labels)}
    vids, segs = store.relation(dataset, version, "videos"), store.relation(dataset, version)
    held_out = f"SELECT * FROM ({vids.sql}) WHERE split <> 'train'"
    records = {r["video_id"]: r for r in run_sql(Relation(held_out, vids.files)).to_pylist()}
    segments = run_sql(Relation(
        f"SELECT s.* FROM ({segs.sql}) s SEMI JOIN ({held_out}) v USING (video_id) "
        "WHERE s.provenance = 'human'", segs.files), ORDER["segments"]).to_pylist()
    truth: dict[str, np.ndarray] = {}
    for s in segments:
        rec = records[s["video_id"]]
        t = truth.setdefault(rec["video_id"], np.full(rec["num_frames"], UNSCORED, np.int64))
        t[s["start_frame"]:s["end_frame"]] = index[s["label"]]
    if not truth:
        raise BadInput(f"dataset {dataset}@{version} has no human-labelled video outside the "
                       "train split, so it cannot be a field suite; pin a version whose val or "
                       "test videos carry human annotations")
    videos = [FieldVideo(video_id=vid, path=records[vid]["path"], source=records[vid]["source"],
                         fps=float(records[vid]["fps"]), num_frames=int(records[vid]["num_frames"]),
                         split=records[vid]["split"], truth=truth[vid])
              for vid in sorted(truth)]
    return FieldSuite(dataset, version, tuple(labels), videos)


def pin(home: Path, dataset: str, version: int, as_: str = "field") -> dict:
    """Pin ``dataset@version`` as the dataset's ``as_`` suite (BadInput/NotFound as
    :func:`suite_of`); returns the suite's description with ``as`` and ``pinned_at``.
    Pinning the version already pinned keeps its first ``pinned_at``."""
    if as_ not in PIN_KINDS:
        raise BadInput(f"--as {as_!r} is not a kind of pin; known: {', '.join(PIN_KINDS)}")
    suite = suite_of(home, dataset, version)
    path = _pins_path(home, dataset)
    with locked(path.with_suffix(".lock")):
        pins = read_json(path) or {}
        old = pins.get(as_)
        if old and (old.get("dataset"), old.get("version")) == (dataset, version):
            record = old
        else:
            record = {"dataset": dataset, "version": version,
                      "pinned_at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
            write_atomic(path, json_bytes({**pins, as_: record}))
    return {"dataset": dataset, "version": version, "as": as_} | suite.describe() | {
        "pinned_at": record["pinned_at"]}


def pinned(home: Path, procedure: str, as_: str = "field") -> tuple[str, int] | None:
    """The ``(dataset, version)`` pinned as ``procedure``'s ``as_`` suite, or None."""
    record = (read_json(_pins_path(home, procedure)) or {}).get(as_)
    return (record["dataset"], int(record["version"])) if record else None


def field_suite(home: Path, procedure: str) -> FieldSuite:
    """``procedure``'s pinned field suite; NoFieldSuite (saying how to pin one) if none."""
    ref = pinned(home, procedure)
    if ref is None:
        raise NoFieldSuite(f"no field suite pinned for {procedure}; run surgflow data pin "
                           f"{procedure}@N --as field (N: a dataset version with human-labelled "
                           "val/test videos)")
    return suite_of(home, *ref)


def _pins_path(home: Path, dataset: str) -> Path:
    DatasetStore(home).dataset_dir(dataset)  # validates the name
    return Path(home) / "pins" / f"{dataset}.json"
