"""Resolving dataset views over a real dataset store: mix, filter, confidence, split, balance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surgflow.data.clip_sampling import ClipSpec, centre_frame, frame_step
from surgflow.data.splits import split_of
from surgflow.data.synthetic import SyntheticVideo
from surgflow.data.taxonomy import CHOLEC80_PHASES, ProcedureCatalog
from surgflow.data.versions import DatasetStore
from surgflow.data.views import ViewSpec, resolve_view
from surgflow.errors import BadInput, NotFound
from tests.view_helpers import commit_corpus, event, register

CLIP = ClipSpec(frames=8, stride=2, size=64)


@pytest.fixture
def labelled(surgflow_home: Path, synthetic_corpus: list[SyntheticVideo]):
    records = commit_corpus(surgflow_home, synthetic_corpus)
    return surgflow_home, synthetic_corpus, records


def _truth(video: SyntheticVideo, frame: int) -> str:
    for s in video.segments:
        if s["start_frame"] <= frame < s["end_frame"]:
            return s["label"]
    raise AssertionError(f"frame {frame} not labelled")


def test_clips_carry_the_label_of_their_centre_frame(labelled):
    home, corpus, _ = labelled
    view = resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP, min_confidence=None),
                        home)
    assert view.classes == CHOLEC80_PHASES
    by_id = {v.video_id: v for v in corpus}
    assert {v.video_id for v in view.videos} == {v.video_id for v in corpus[:4]}  # humans only
    seen = set()
    for vi, start, label in zip(view.video, view.start, view.label, strict=True):
        v = view.videos[vi]
        step = frame_step(v.fps, CLIP.fps)
        centre = centre_frame(int(start), CLIP, step)
        assert view.classes[label] == _truth(by_id[v.video_id], centre)
        assert start + 14 < v.num_frames
        seen.add(v.video_id)
    # back-to-back clips of 8 frames 2 apart: one every 16 frames
    per_video = np.bincount(view.video)
    assert per_video.tolist() == [v.num_frames // 16 for v in view.videos]
    assert len(seen) == 4


def test_same_spec_same_indices_and_seeded_sampler(labelled):
    home, _, _ = labelled
    spec = ViewSpec(sources=["cholecystectomy@1"], clip=CLIP, balance="inverse_frequency",
                    seed=11)
    a, b = resolve_view(spec, home), resolve_view(spec, home)
    assert a.digest() == b.digest()
    assert np.array_equal(a.start, b.start) and np.array_equal(a.weights, b.weights)
    assert list(a.sampler(batch_size=4)) == list(b.sampler(batch_size=4))
    other = resolve_view(spec.model_copy(update={"seed": 12}), home)
    assert other.digest() == a.digest()  # the seed orders sampling, not the clip list
    assert list(other.sampler(batch_size=4)) != list(a.sampler(batch_size=4))
    coarser = resolve_view(spec.model_copy(update={"clip": ClipSpec(frames=16, size=64)}), home)
    assert coarser.digest() != a.digest()


def test_min_confidence_admits_confident_model_labels(labelled):
    home, corpus, _ = labelled
    ids = [v.video_id for v in corpus]

    def videos(min_confidence):
        spec = ViewSpec(sources=["cholecystectomy"], clip=CLIP, min_confidence=min_confidence)
        return {v.video_id for v in resolve_view(spec, home).videos}

    assert videos(None) == set(ids[:4])
    assert videos(0.5) == set(ids[:5])
    assert videos(0.3) == set(ids)
    assert videos(0.95) == set(ids[:4])


def test_sql_filter_on_videos_and_segments(labelled):
    home, _, _ = labelled
    spec = ViewSpec(sources=["cholecystectomy"], clip=CLIP, filter="source = 'hospital-a'")
    view = resolve_view(spec, home)
    assert {v.source for v in view.videos} == {"hospital-a"}
    assert len(view.videos) == 2
    spec = ViewSpec(sources=["cholecystectomy"], clip=CLIP,
                    filter="label <> 'Preparation' AND width >= 200")
    view = resolve_view(spec, home)
    assert "Preparation" not in {view.classes[i] for i in view.label}
    assert all(v.width >= 200 for v in view.videos) and view.videos


def test_a_view_filter_sees_the_column_types_data_query_shows(labelled):
    """One ``videos`` schema: a filter written against ``data query``'s types keeps rows."""
    from surgflow.data.query import query

    home, _, _ = labelled
    types = query(home, "SELECT DISTINCT typeof(width) AS w, typeof(recorded_at) AS t, "
                        "typeof(num_frames) AS n FROM videos")
    assert types == [{"w": "INTEGER", "t": "TIMESTAMP WITH TIME ZONE", "n": "BIGINT"}]
    typed = ("typeof(width) = 'INTEGER' AND typeof(recorded_at) = 'TIMESTAMP WITH TIME ZONE' "
             "AND typeof(num_frames) = 'BIGINT'")
    every = resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP), home)
    same = resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP, filter=typed), home)
    assert len(same) == len(every) > 0


@pytest.mark.parametrize("bad,match", [
    ("source = 'a'; DROP TABLE segments", "one boolean expression|not valid SQL"),
    ("sourze = 'a'", "failed"),
    ("(SELECT count(*) FROM read_csv('/etc/passwd')) > 0", "failed"),
])
def test_sql_filter_rejects_writes_typos_and_file_access(labelled, bad, match):
    home, _, _ = labelled
    with pytest.raises(BadInput, match=match):
        resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP, filter=bad), home)


def test_split_keeps_only_its_videos(labelled):
    home, _, _ = labelled
    every = resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP, min_confidence=0.0),
                         home)
    total = 0
    for split in ("train", "val", "test"):
        view = resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP, split=split,
                                     min_confidence=0.0), home)
        assert all(split_of(v.video_id) == split == v.split for v in view.videos)
        total += len(view)
    assert total == len(every)


def test_balancing_by_label_and_by_source_reports_target_and_achieved(labelled):
    home, _, _ = labelled
    natural = resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP), home)
    view = resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP,
                                 balance="inverse_frequency"), home)
    report = view.report()
    k = len(set(view.label.tolist()))
    for row in report["distribution"].values():
        assert row["target"] == pytest.approx(1 / k)
        assert row["achieved"] == pytest.approx(1 / k)
    assert max(r["natural"] for r in report["distribution"].values()) > 1.5 / k  # was skewed
    counts = np.bincount(view.label)
    for i in set(view.label.tolist()):  # weight = N / (K n_c), the reference formula
        assert view.weights[view.label == i][0] == pytest.approx(len(view) / (k * counts[i]))
    assert np.array_equal(natural.start, view.start)

    by_source = resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP, min_confidence=0,
                                      balance="inverse_frequency", balance_by="source"), home)
    shares = by_source.report()["distribution"]
    assert set(shares) == {"hospital-a", "hospital-b", "hospital-c"}
    assert all(r["achieved"] == pytest.approx(1 / 3) for r in shares.values())
    capped = resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP, balance_by="video",
                                   balance="cap_per_class", balance_params={"cap": 10}), home)
    for vi in range(len(capped.videos)):
        n = int(np.sum(capped.video == vi))
        assert capped.weights[capped.video == vi].sum() / capped.weights.sum() == pytest.approx(
            min(n, 10) / sum(min(int(c), 10) for c in np.bincount(capped.video)))


def test_mixing_procedures_and_versions(labelled):
    home, corpus, records = labelled
    ProcedureCatalog(home).add("appendectomy", ["Access", "Dissection", "Closure"])
    appx = register(home, corpus[:2], procedure="appendectomy", suffix="-appx")
    segs = [{"start_frame": 0, "end_frame": 100, "label": "Access"},
            {"start_frame": 100, "end_frame": 250, "label": "Closure"}]
    DatasetStore(home).commit("appendectomy", videos=appx,
                              events=[event(r, segs, n=1) for r in appx], offsets={})
    view = resolve_view(ViewSpec(sources=["cholecystectomy@1", "appendectomy"], clip=CLIP), home)
    assert view.classes == ("Access", "Dissection", "Closure", *CHOLEC80_PHASES)
    assert {(v.dataset, v.version) for v in view.videos} == {("cholecystectomy", 1),
                                                             ("appendectomy", 1)}
    appx_clips = np.isin(view.video, [i for i, v in enumerate(view.videos)
                                      if v.dataset == "appendectomy"])
    assert set(view.label[appx_clips].tolist()) == {0, 2}

    # version 2 relabels the first video everywhere; a mix lists v2 first, so v2's labels win
    DatasetStore(home).commit("cholecystectomy", videos=[], offsets={}, events=[
        event(records[0], [{"start_frame": 0, "end_frame": records[0].num_frames,
                            "label": "ClippingCutting"}], n=7)])
    mixed = resolve_view(ViewSpec(sources=["cholecystectomy@2", "cholecystectomy@1"], clip=CLIP,
                                  min_confidence=None), home)
    first = [i for i, v in enumerate(mixed.videos) if v.video_id == records[0].video_id]
    assert len(first) == 1 and mixed.videos[first[0]].version == 2
    assert set(mixed.label[mixed.video == first[0]].tolist()) == {2}
    assert len(mixed.videos) == 4


def test_bad_specs_name_the_problem(labelled):
    home, _, _ = labelled
    with pytest.raises(ValueError, match="known: cap_per_class, effective_number"):
        ViewSpec(sources=["cholecystectomy"], balance="oversample")
    with pytest.raises(ValueError, match="DATASET@VERSION"):
        ViewSpec(sources=["cholecystectomy@latest"])
    with pytest.raises(ValueError, match="takes cap"):
        ViewSpec(sources=["cholecystectomy"], balance="cap_per_class", balance_params={"beta": 1})
    with pytest.raises(NotFound, match="no version 9"):
        resolve_view(ViewSpec(sources=["cholecystectomy@9"]), home)
    with pytest.raises(NotFound, match="appendectomy"):
        resolve_view(ViewSpec(sources=["appendectomy"]), home)
