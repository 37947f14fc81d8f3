"""The field suite: `surgflow data pin DATASET@N --as field` and the ground truth it yields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from surgflow.data.labels import LabelEvent, LabelSegment
from surgflow.data.pins import NoFieldSuite, field_suite, pin, pinned
from surgflow.data.registry import VideoRecord
from surgflow.data.splits import ids_filling_splits
from surgflow.data.taxonomy import CHOLEC80_PHASES
from surgflow.data.versions import DatasetStore
from surgflow.errors import BadInput, NotFound
from tests.cli_helpers import run_cli

DS = "cholecystectomy"
T0 = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
IDS = dict((split, [vid for _, vid in ids_filling_splits({split: 1}, f"{split}-{{:03d}}".format)])
           for split in ("train", "val", "test"))


def rec(video_id: str, source: str = "hospital-a", num_frames: int = 100) -> VideoRecord:
    return VideoRecord(
        video_id=video_id, uri=f"/v/{video_id}.mp4", path=f"/v/{video_id}.mp4",
        sha256=video_id.encode().hex().ljust(64, "0")[:64], size_bytes=1, procedure=DS,
        source=source, recorded_at=None, num_frames=num_frames, fps=10.0, width=64, height=64,
        duration_s=num_frames / 10, registered_at=T0,
    )


def event(eid: str, vid: str, provenance: str, *segs: tuple[int, int, str], late: int = 0):
    segments = tuple(LabelSegment(a, b, lbl, 0.9 if provenance == "model" else None)
                     for a, b, lbl in segs)
    return LabelEvent(eid, vid, provenance, T0 + timedelta(seconds=late), 0, 0, segments)


@pytest.fixture
def store(surgflow_home: Path) -> DatasetStore:
    """v1: model labels only. v2: human labels on the train, val and test videos, a model label
    on part of the val video, and a later model label that loses to the human one."""
    s = DatasetStore(surgflow_home)
    train, val, test = IDS["train"][0], IDS["val"][0], IDS["test"][0]
    s.commit(DS, videos=[rec(train), rec(val, "hospital-b"), rec(test)], offsets={},
             events=[event("m-1", val, "model", (0, 100, "Preparation"))])
    s.commit(DS, videos=[], offsets={}, events=[
        event("h-train", train, "human", (0, 100, "Preparation")),
        event("h-val", val, "human", (10, 40, "CalotTriangleDissection"),
              (40, 60, "ClippingCutting")),
        event("m-late", val, "model", (30, 50, "GallbladderDissection"), late=60),
        event("h-test", test, "human", (0, 100, "GallbladderPackaging")),
    ])
    return s


def test_suite_is_human_labelled_videos_outside_train_with_model_frames_masked(store):
    home = store.home
    with pytest.raises(NoFieldSuite, match="no field suite pinned for cholecystectomy; run "
                                           "surgflow data pin cholecystectomy@N --as field"):
        field_suite(home, DS)
    out = pin(home, DS, 2)
    assert (out["dataset"], out["version"], out["as"], out["videos"]) == (DS, 2, "field", 2)
    assert out["sources"] == {"hospital-a": 1, "hospital-b": 1}
    suite = field_suite(home, DS)
    assert suite.ref == f"{DS}@2" and suite.labels == CHOLEC80_PHASES
    by_id = {v.video_id: v for v in suite.videos}
    assert set(by_id) == {IDS["val"][0], IDS["test"][0]}  # the train video never grades
    val = by_id[IDS["val"][0]]
    assert val.source == "hospital-b" and val.truth.shape == (100,)
    expected = np.full(100, -1)
    expected[10:40] = 1  # the human label beats the later model label on 30..40
    expected[40:60] = 2
    # frames 0..10 and 60..100 carry model labels only: never ground truth
    assert val.truth.tolist() == expected.tolist()
    assert out["labelled_frames"] == 50 + 100


def test_pin_rejects_what_cannot_be_a_field_suite(store):
    home = store.home
    with pytest.raises(BadInput, match="no human-labelled video outside the train split"):
        pin(home, DS, 1)
    with pytest.raises(NotFound, match="has no version 9"):
        pin(home, DS, 9)
    with pytest.raises(BadInput, match="not a kind of pin"):
        pin(home, DS, 2, "train")
    assert pinned(home, DS) is None  # nothing was pinned by the failures
    first = pin(home, DS, 2)
    assert pin(home, DS, 2)["pinned_at"] == first["pinned_at"]


def test_data_pin_command(store):
    out = run_cli("data", "pin", f"{DS}@2", "--as", "field", json=True).data
    assert (out["dataset"], out["version"], out["as"], out["videos"]) == (DS, 2, "field", 2)
    for ref, why in ((f"{DS}@1", "no human-labelled video"), ("nosuch@1", "nosuch"),
                     (DS, "expected DATASET@N")):
        r = run_cli("data", "pin", ref, "--as", "field", json=True, check=False)
        assert r.returncode == 2 and r.stdout == "", (ref, r.returncode, r.stdout)
        assert why in r.stderr and r.stderr.startswith("error:"), r.stderr
    assert pinned(store.home, DS) == (DS, 2)
