"""Per-frame label resolution (SPEC §4): the library's engine (:mod:`surgflow.data.changes`, on
Arrow columns) against an oracle on interval objects (``tests/precedence_oracle.py``) and
against a per-frame brute force, on random events: human against model, ``produced_at`` ties
broken by ``(partition, offset)``, one instant spelled ``Z``, ``+00:00`` or another offset,
overlapping ranges, replays."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from surgflow.data import datafiles as df
from surgflow.data.changes import apply_events, resolve_rows
from surgflow.data.labels import Interval, LabelEvent, LabelSegment, check_event, untouched_by
from surgflow.errors import BadInput
from surgflow.feedback.schemas import UtcTime
from tests import precedence_oracle as oracle

LABELS = ("A", "B", "C")
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
N_FRAMES = 40
#: how the stream may spell one instant's offset (``Z`` and ``+00:00`` are the same)
OFFSETS = {"Z": timedelta(0), "+00:00": timedelta(0), "+02:00": timedelta(hours=2),
           "-05:00": timedelta(hours=-5)}
EMPTY = df.intervals_table({})
_wire_time = TypeAdapter(UtcTime)


def wire_time(instant: datetime, spelling: str) -> datetime:
    """``instant`` as the stream's parser reads it from RFC 3339 text with that offset."""
    local = instant.astimezone(timezone(OFFSETS[spelling]))
    return _wire_time.validate_python(local.strftime("%Y-%m-%dT%H:%M:%S") + spelling)


def ev(eid, vid, prov, t, segs, partition=0, offset=0):
    return LabelEvent(eid, vid, prov, t, partition, offset,
                      tuple(LabelSegment(*s) for s in segs))


@st.composite
def events(draw, max_events=8):
    n = draw(st.integers(1, max_events))
    out = []
    for i in range(n):
        prov = draw(st.sampled_from(["human", "model"]))
        segs = []
        for _ in range(draw(st.integers(1, 3))):
            a = draw(st.integers(0, N_FRAMES - 1))
            b = draw(st.integers(a + 1, N_FRAMES))
            conf = None if prov == "human" else draw(st.sampled_from([0.2, 0.5, 0.9]))
            segs.append((a, b, draw(st.sampled_from(LABELS)), conf))
        # few instants, so ties on produced_at are common, each spelled any of four ways
        produced_at = wire_time(T0 + timedelta(minutes=draw(st.integers(0, 3))),
                                draw(st.sampled_from(sorted(OFFSETS))))
        out.append(ev(
            f"e{i}", draw(st.sampled_from(["v1", "v2"])), prov, produced_at, segs,
            partition=draw(st.integers(0, 1)), offset=draw(st.integers(0, 3)),
        ))
    return out


def library(evs, parent: pa.Table = EMPTY) -> dict[str, list[Interval]]:
    """What the library's engine resolves ``evs`` to on top of ``parent``'s interval rows."""
    return df.table_intervals(apply_events(parent, list(evs)).intervals)


def reference(evs):
    """Per-frame winner by brute force: {video: {frame: (label, provenance, confidence)}}."""
    best: dict = {}
    for e in evs:
        rank = (1 if e.provenance == "human" else 0, e.produced_at.timestamp(), e.partition,
                e.offset, e.event_id)
        for s in e.segments:
            for f in range(s.start_frame, s.end_frame):
                conf = None if e.provenance == "human" else s.confidence
                cand = (*rank, s.label, -1.0 if conf is None else conf)
                cur = best.setdefault(e.video_id, {}).get(f)
                if cur is None or cand > cur[0]:
                    best[e.video_id][f] = (cand, (s.label, e.provenance, conf))
    return {v: {f: w for f, (_, w) in frames.items()} for v, frames in best.items()}


def per_frame(result):
    out = {}
    for vid, ivs in result.items():
        frames = {}
        for iv in ivs:
            for f in range(iv.start_frame, iv.end_frame):
                assert f not in frames, f"overlap at frame {f} of {vid}"
                frames[f] = (iv.label, iv.provenance, iv.confidence)
        out[vid] = frames
    return out


@settings(max_examples=300, deadline=None)
@given(events(max_events=10), st.data())
def test_the_library_engine_resolves_as_the_oracle_does(evs, data):
    """A commit on top of a parent the library resolved, the new events in any order with
    replays among them, equals the oracle resolving every event at once: the same intervals
    (winners and their keys), the same coalesced segments, the same frames before."""
    cut = data.draw(st.integers(0, len(evs)))
    parent = apply_events(EMPTY, evs[:cut]).intervals
    rest = data.draw(st.permutations([*evs[cut:], *data.draw(
        st.lists(st.sampled_from(evs), max_size=3))]))
    change = apply_events(parent, rest)
    once = oracle.resolve({}, evs)
    assert df.table_intervals(change.intervals) == once
    assert change.after == {v: oracle.coalesce(ivs) for v, ivs in once.items()}
    held = list(itertools.chain(*oracle.resolve({}, evs[:cut]).values()))
    assert change.frames_before == (oracle.frames_by(held, "label"),
                                    oracle.frames_by(held, "provenance"))


@settings(max_examples=150, deadline=None)
@given(events())
def test_both_engines_match_the_per_frame_reference(evs):
    assert per_frame(library(evs)) == reference(evs)
    assert per_frame(oracle.resolve({}, evs)) == reference(evs)


@settings(max_examples=150, deadline=None)
@given(events(), st.randoms(use_true_random=False))
def test_order_never_changes_the_result(evs, rnd):
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    assert library(evs) == library(shuffled)


@settings(max_examples=150, deadline=None)
@given(events(), st.data())
def test_incremental_equals_all_at_once_and_reapplying_changes_nothing(evs, data):
    cut = data.draw(st.integers(0, len(evs)))
    once = apply_events(EMPTY, evs).intervals
    incremental = apply_events(apply_events(EMPTY, evs[:cut]).intervals, evs[cut:]).intervals
    assert df.table_intervals(incremental) == df.table_intervals(once)
    replay = data.draw(st.lists(st.sampled_from(evs), max_size=5))
    assert library(replay, once) == df.table_intervals(once)


@settings(max_examples=200, deadline=None)
@given(events(max_events=12), st.data())
def test_resolving_rows_equals_resolving_interval_objects(evs, data):
    """The table form of resolution against the oracle, on raw candidates (duplicates, equal
    keys, pieces of one event on both sides of another's) and on resolved pieces."""
    candidates = {v: [iv for e in evs if e.video_id == v for iv in oracle.intervals_of(e)]
                  for v in sorted({e.video_id for e in evs})}
    extra = data.draw(st.lists(st.sampled_from(evs), max_size=4))
    for e in extra:  # replays and pieces already resolved take part too
        candidates[e.video_id] += oracle.intervals_of(e)
    for v, ivs in oracle.resolve({}, evs[:data.draw(st.integers(0, len(evs)))]).items():
        candidates.setdefault(v, []).extend(ivs)
    rows = resolve_rows(df.intervals_table(candidates))
    assert df.table_intervals(rows) == {v: oracle.resolve_video(c)
                                        for v, c in candidates.items() if c}


def test_untouched_are_the_intervals_no_new_range_overlaps():
    # spans [5, 12) and [20, 21); touching an end is not overlapping
    new = [(5, 8), (7, 12), (20, 21)]
    assert untouched_by([0, 5, 12, 15, 21], [5, 12, 15, 21, 30], new) == [
        True, False, True, False, True]
    assert untouched_by([0], [10], []) == [True]


@settings(max_examples=150, deadline=None)
@given(events())
def test_human_beats_model_everywhere(evs):
    human_frames = {(e.video_id, f) for e in evs if e.provenance == "human"
                    for s in e.segments for f in range(s.start_frame, s.end_frame)}
    for vid, frames in per_frame(library(evs)).items():
        for f, (_, prov, conf) in frames.items():
            if (vid, f) in human_frames:
                assert prov == "human" and conf is None


def test_later_produced_at_wins_compared_as_instants_not_text():
    # 11:00+02:00 is 09:00Z: earlier than 10:00Z although its text sorts later.
    early = ev("x", "v", "model", wire_time(T0 - timedelta(hours=1), "+02:00"),
               [(0, 10, "A", 0.9)], offset=9)
    late = ev("y", "v", "model", wire_time(T0, "Z"), [(0, 10, "B", 0.3)], offset=1)
    assert [iv.label for iv in library([late, early])["v"]] == ["B"]
    # the same instant spelled Z and +00:00 is a tie, which the later offset wins
    z = ev("z", "v", "model", wire_time(T0, "Z"), [(0, 10, "A", 0.9)], offset=2)
    utc = ev("u", "v", "model", wire_time(T0, "+00:00"), [(0, 10, "B", 0.9)], offset=1)
    assert [iv.event_id for iv in library([z, utc])["v"]] == ["z"]


def test_tie_on_time_goes_to_later_partition_and_offset():
    a = ev("a", "v", "model", T0, [(0, 10, "A", 0.9)], partition=0, offset=7)
    b = ev("b", "v", "model", T0, [(5, 10, "B", 0.9)], partition=1, offset=2)
    c = ev("c", "v", "model", T0, [(0, 3, "C", 0.9)], partition=1, offset=1)
    got = [(i.start_frame, i.end_frame, i.label) for i in library([a, b, c])["v"]]
    assert got == [(0, 3, "C"), (3, 5, "A"), (5, 10, "B")]


def test_old_human_beats_new_model_and_keeps_no_confidence():
    h = ev("h", "v", "human", T0 - timedelta(days=30), [(2, 6, "A", 0.1)])
    m = ev("m", "v", "model", T0, [(0, 10, "B", 0.99)])
    got = [(i.start_frame, i.end_frame, i.label, i.provenance, i.confidence)
           for i in library([m, h])["v"]]
    assert got == [(0, 2, "B", "model", 0.99), (2, 6, "A", "human", None),
                   (6, 10, "B", "model", 0.99)]


def test_coalesce_merges_same_label_provenance_confidence_only():
    m1 = ev("m1", "v", "model", T0, [(0, 5, "A", 0.5)])
    m2 = ev("m2", "v", "model", T0 + timedelta(seconds=1), [(5, 9, "A", 0.5), (9, 12, "A", 0.7)])
    h = ev("h", "v", "human", T0, [(12, 15, "A", None)])
    change = apply_events(EMPTY, [m1, m2, h])
    assert change.intervals.num_rows == 4  # distinct winning keys stay apart for later events
    segs = [(s.start_frame, s.end_frame, s.provenance, s.confidence) for s in change.after["v"]]
    assert segs == [(0, 9, "model", 0.5), (9, 12, "model", 0.7), (12, 15, "human", None)]


def test_a_commit_carries_what_its_events_do_not_overlap():
    parent = apply_events(EMPTY, [ev("a", "v1", "model", T0, [(0, 4, "A", 0.5)]),
                                  ev("b", "v2", "model", T0, [(0, 4, "A", 0.5),
                                                              (10, 20, "B", 0.5)])]).intervals
    before = df.table_intervals(parent)
    after = library([ev("c", "v2", "human", T0, [(12, 15, "C", None)])], parent)
    assert after["v1"] == before["v1"] and after["v2"][0] == before["v2"][0]
    assert [(i.start_frame, i.end_frame, i.label) for i in after["v2"][1:]] == [
        (10, 12, "B"), (12, 15, "C"), (15, 20, "B")]


def test_resolution_covers_exactly_the_union_of_many_overlapping_intervals():
    rnd = random.Random(3)
    ivs, covered = [], set()
    for i in range(3000):
        a = rnd.randrange(0, 50_000)
        b = a + rnd.randrange(1, 200)
        covered.update(range(a, b))
        ivs.append(Interval(a, b, rnd.choice(LABELS), "model", 0.5, T0, 0, i, f"e{i}"))
    [out] = df.table_intervals(resolve_rows(df.intervals_table({"v": ivs[::-1]}))).values()
    assert all(x.end_frame <= y.start_frame for x, y in itertools.pairwise(out))
    assert sum(iv.end_frame - iv.start_frame for iv in out) == len(covered)
    assert out == oracle.resolve_video(ivs)


@pytest.mark.parametrize(
    ("segs", "reason"),
    [
        ([], "no segments"),
        ([(0, 10, "Z", None)], "unknown label 'Z'"),
        ([(0, 41, "A", None)], "outside the video's 40 frames"),
        ([(-1, 3, "A", None)], "outside"),
        ([(5, 5, "A", None)], "empty range"),
        ([(0, 10, "A", None), (9, 12, "B", None)], "overlap"),
    ],
)
def test_check_event_names_the_problem(segs, reason):
    with pytest.raises(BadInput, match=reason) as info:
        check_event(ev("e-9", "case-1", "human", T0, segs), LABELS, N_FRAMES)
    assert "e-9" in str(info.value) and "case-1" in str(info.value)


def test_check_event_accepts_a_good_event_and_rejects_naive_times():
    check_event(ev("ok", "v", "model", T0, [(0, 40, "A", 0.5)]), LABELS, N_FRAMES)
    with pytest.raises(BadInput, match="timezone-aware"):
        ev("naive", "v", "model", datetime(2026, 1, 1), [(0, 1, "A", 0.5)])
    with pytest.raises(BadInput, match=r"outside \[0, 1\]"):
        check_event(ev("c", "v", "model", T0, [(0, 1, "A", 1.5)]), LABELS, N_FRAMES)
