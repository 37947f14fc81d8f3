"""Out-of-body scenes in synthetic videos: schedule arithmetic, ground truth, and how they look."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgflow.data.privacy import IN_BODY, OUT_OF_BODY
from surgflow.data.synthetic import (
    generate_corpus,
    generate_video,
    load_privacy,
    load_segments,
)
from surgflow.data.synthetic_scenes import (
    HARD_IN_BODY_SCENES,
    OUT_OF_BODY_SCENES,
    cut,
    hard_scene_schedule,
    out_of_body_schedule,
    privacy_segments,
    scene_schedule,
)
from surgflow.data.video import sha256_file

TINY = dict(width=64, height=48, fps=5)


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _outside(video) -> set[int]:
    return {i for p in video.privacy if p["label"] == OUT_OF_BODY
            for i in range(p["start_frame"], p["end_frame"])}


def _covered(segments: list[dict]) -> list[int]:
    return sorted(i for s in segments for i in range(s["start_frame"], s["end_frame"]))


# --- pure arithmetic ---------------------------------------------------------------------------

def _contiguous(lengths: list[int]) -> list[tuple[int, int, int]]:
    # labels alternate between two so that pieces of neighbours with one label can show that
    # they stay apart
    ends = list(itertools.accumulate(lengths))
    return [(e - n, e, k % 2) for k, (e, n) in enumerate(zip(ends, lengths, strict=True))]


_segments = st.lists(st.integers(1, 12), max_size=8).map(_contiguous)
_ranges = st.lists(st.tuples(st.integers(-3, 100), st.integers(0, 20)).map(
    lambda r: (r[0], r[0] + r[1])), max_size=6)


@given(_segments, _ranges)
def test_cut_matches_a_per_frame_enumeration(segments, ranges) -> None:
    holes = {i for s, e in ranges for i in range(s, e)}
    expected: list[tuple[int, int, int]] = []
    for s, e, label in segments:
        run_start = None
        for i in range(s, e + 1):
            kept = i < e and i not in holes
            if kept and run_start is None:
                run_start = i
            elif not kept and run_start is not None:
                expected.append((run_start, i, label))
                run_start = None
    assert cut(segments, ranges) == expected


@given(st.integers(0, 300), _ranges)
def test_privacy_segments_cover_the_video_and_alternate(n: int, ranges) -> None:
    track = privacy_segments(n, ranges)
    holes = {i for s, e in ranges for i in range(s, e) if 0 <= i < n}
    assert _covered(track) == list(range(n))
    assert all(a["end_frame"] == b["start_frame"] and a["label"] != b["label"]
               for a, b in itertools.pairwise(track))
    assert {i for p in track if p["label"] == OUT_OF_BODY
            for i in range(p["start_frame"], p["end_frame"])} == holes


@pytest.mark.parametrize("seed", range(60))
def test_out_of_body_schedule_opens_closes_and_cleans_well_inside(seed: int) -> None:
    rng = np.random.default_rng(seed)
    fps = float(rng.choice([1, 5, 10, 25, 30]))
    # tiny videos, videos about as short as may hold cleanings, long ones
    lo, hi = ((4, 400), (11 * fps, 14 * fps), (4, 100_000))[seed % 3]
    n = int(rng.integers(lo, hi))
    ranges = out_of_body_schedule(np.random.default_rng(seed), n, fps)
    assert ranges[0][0] == 0 and ranges[-1][1] == n, "opens and closes outside the body"
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges)), "apart, in order"
    assert sum(e - s for s, e in ranges) <= n / 2, "at least half stays in-body"
    if n >= 8 * fps:
        assert ranges[0][1] >= 2 * fps and n - ranges[-1][0] >= 2 * fps
    cleanings = ranges[1:-1]
    assert len(cleanings) <= (2 if n >= 12 * fps else 0)
    for s, e in cleanings:
        assert n / 10 <= s and e <= 0.9 * n and e - s >= round(1.5 * fps)


def test_schedules_are_deterministic_and_vary_by_seed() -> None:
    def draw(seed):
        return scene_schedule(np.random.default_rng(seed), 30_000, 25.0)

    assert draw(1) == draw(1)
    schedules = [draw(seed) for seed in range(40)]
    assert len({tuple(s) for s in schedules}) == 40
    cleanings = [len(out_of_body_schedule(np.random.default_rng(s), 30_000, 25.0)) - 2
                 for s in range(40)]
    assert set(cleanings) == {0, 1, 2}
    kinds = {kind for sched in schedules for *_, kind in sched}
    assert kinds == set(OUT_OF_BODY_SCENES) | set(HARD_IN_BODY_SCENES)
    assert any(a[1] == b[0] for sched in schedules for a, b in itertools.pairwise(sched)
               if a[2] in OUT_OF_BODY_SCENES and b[2] in OUT_OF_BODY_SCENES), (
        "some openings or closings show two scenes in sequence")


@pytest.mark.parametrize("seed", range(30))
def test_hard_scenes_are_short_disjoint_and_in_body(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, fps = int(rng.integers(10, 20_000)), 25.0
    oob = out_of_body_schedule(rng, n, fps)
    hard = hard_scene_schedule(rng, n, fps, oob)
    assert 1 <= len(hard) <= 3
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(hard))
    outside = {i for s, e in oob for i in range(s, e)}
    for s, e in hard:
        assert 1 <= e - s <= max(1, min(3 * fps, n // 10))
        assert not outside & set(range(s, e))


# --- written videos ----------------------------------------------------------------------------


def test_an_out_of_body_video_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = generate_video(tmp_path / "a" / "v.mp4", seed=3, duration_s=15, out_of_body=True, **TINY)
    b = generate_video(tmp_path / "b" / "v.mp4", seed=3, duration_s=15, out_of_body=True, **TINY)
    c = generate_video(tmp_path / "c" / "v.mp4", seed=4, duration_s=15, out_of_body=True, **TINY)
    assert sha256_file(a.path) == sha256_file(b.path) != sha256_file(c.path)
    assert a.segments_path.read_text() == b.segments_path.read_text()
    assert a.scenes != c.scenes


@pytest.mark.parametrize(("seed", "duration_s"), [(1, 15), (2, 40), (3, 3), (4, 2)])
def test_ground_truth_of_an_out_of_body_video(tmp_path: Path, seed: int, duration_s) -> None:
    v = generate_video(tmp_path / "v.mp4", seed=seed, duration_s=duration_s, out_of_body=True,
                       **TINY)
    n = v.num_frames
    meta = json.loads(v.segments_path.read_text())
    assert meta["privacy"] == v.privacy == load_privacy(v.path)
    assert meta["scenes"] == v.scenes and load_segments(v.path) == v.segments

    assert _covered(v.privacy) == list(range(n))
    assert all(a["label"] != b["label"] for a, b in itertools.pairwise(v.privacy))
    assert v.privacy[0]["label"] == v.privacy[-1]["label"] == OUT_OF_BODY
    outside = _outside(v)
    assert len(outside) <= n / 2
    assert _covered(v.segments) == sorted(set(range(n)) - outside), (
        "phases cover exactly the in-body frames, each once")

    scene_frames = {s["scene"]: set() for s in v.scenes}
    for s in v.scenes:
        scene_frames[s["scene"]] |= set(range(s["start_frame"], s["end_frame"]))
    assert set().union(*(f for k, f in scene_frames.items() if k in OUT_OF_BODY_SCENES)) == outside
    in_body_scenes = set().union(*(f for k, f in scene_frames.items() if k in HARD_IN_BODY_SCENES))
    assert in_body_scenes and not in_body_scenes & outside
    assert in_body_scenes <= set(_covered(v.segments)), "smoke and tissue keep their phase"


def test_out_of_body_phases_are_the_default_schedule_with_the_ranges_cut_out(
    tmp_path: Path,
) -> None:
    plain = generate_video(tmp_path / "plain.mp4", seed=8, duration_s=30, **TINY)
    oob = generate_video(tmp_path / "oob.mp4", seed=8, duration_s=30, out_of_body=True, **TINY)
    ranges = [(p["start_frame"], p["end_frame"]) for p in oob.privacy if p["label"] == OUT_OF_BODY]
    as_tuples = [(s["start_frame"], s["end_frame"], s["label"]) for s in plain.segments]
    assert [(s["start_frame"], s["end_frame"], s["label"]) for s in oob.segments] == cut(
        as_tuples, ranges)


def test_without_out_of_body_the_video_is_in_body_throughout(tmp_path: Path) -> None:
    v = generate_video(tmp_path / "v.mp4", seed=3, duration_s=6, **TINY)
    same = generate_video(tmp_path / "w.mp4", seed=3, duration_s=6, out_of_body=False, **TINY)
    assert sha256_file(v.path) == sha256_file(same.path)
    assert v.scenes == [] and v.privacy == load_privacy(v.path) == [
        {"start_frame": 0, "end_frame": v.num_frames, "label": IN_BODY}]
    assert v.segments[0]["start_frame"] == 0 and v.segments[-1]["end_frame"] == v.num_frames
    assert all(a["end_frame"] == b["start_frame"] for a, b in itertools.pairwise(v.segments))

    meta = json.loads(v.segments_path.read_text())
    del meta["privacy"]
    v.segments_path.write_text(json.dumps(meta))
    assert load_privacy(v.path) == [{"start_frame": 0, "end_frame": 30, "label": IN_BODY}], (
        "an older sidecar without the track is in-body throughout")


def test_a_corpus_passes_out_of_body_on(tmp_path: Path) -> None:
    videos = generate_corpus(tmp_path, 2, seed=1, duration_s=4, fps=5, size=(64, 48),
                             out_of_body=True)
    assert all(v.privacy[0]["label"] == OUT_OF_BODY and v.scenes for v in videos)


# --- how scenes look ---------------------------------------------------------------------------


def _per_frame_kind(video) -> np.ndarray:
    kind = np.full(video.num_frames, "phase", dtype=object)
    for s in video.scenes:
        kind[s["start_frame"] : s["end_frame"]] = s["scene"]
    return kind


def test_out_of_body_scenes_look_nothing_like_the_inside(tmp_path: Path) -> None:
    sat, lum, kind = [], [], []
    for seed in range(12):
        v = generate_video(tmp_path / f"v{seed}.mp4", seed=seed, duration_s=20, out_of_body=True,
                           **TINY)
        rgb = _frames(v.path).astype(np.float64)
        hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
        sat.append(((hi - lo) / np.maximum(hi, 1)).mean(axis=(1, 2)))
        lum.append((rgb @ [0.299, 0.587, 0.114]).mean(axis=(1, 2)))
        kind.append(_per_frame_kind(v))
        if len(set(np.concatenate(kind))) == 1 + len(OUT_OF_BODY_SCENES + HARD_IN_BODY_SCENES):
            break
    sat, lum, kind = np.concatenate(sat), np.concatenate(lum), np.concatenate(kind)
    assert set(kind) == {"phase", *OUT_OF_BODY_SCENES, *HARD_IN_BODY_SCENES}
    outside, inside = np.isin(kind, OUT_OF_BODY_SCENES), kind == "phase"
    assert sat[outside].max() < 0.2 < 0.3 < sat[inside].min(), "out-of-body is nearly grey"
    assert lum[outside].min() > lum[inside].max() + 20, "and brighter than every phase"
    towel = kind == "towel"
    assert lum[towel].min() > 220 and sat[towel].max() < 0.05, "towels are near-white"
    tissue = kind == "tissue"
    assert sat[tissue].min() > 0.3 and lum[tissue].max() < 160, "tissue stays pink and dim"


def test_smoke_is_the_phase_seen_through_grey_haze(tmp_path: Path) -> None:
    fits = 0
    for seed in (3, 4, 8):
        v = generate_video(tmp_path / f"v{seed}.mp4", seed=seed, duration_s=20, out_of_body=True,
                           **TINY)
        colour = _frames(v.path).astype(np.float64).mean(axis=(1, 2))
        kind = _per_frame_kind(v)
        label = np.full(v.num_frames, "", dtype=object)
        for seg in v.segments:
            label[seg["start_frame"] : seg["end_frame"]] = seg["label"]
        for phase in set(label[kind == "smoke"]):
            clear = colour[(label == phase) & (kind == "phase")].mean(axis=0)
            smoky = colour[(label == phase) & (kind == "smoke")].mean(axis=0)
            # smoky = clear + share * (haze - clear) for a light grey haze
            towards = np.array([200.0, 200.0, 204.0]) - clear
            share = float(np.dot(smoky - clear, towards) / np.dot(towards, towards))
            assert 0.5 < share < 0.75, f"{phase}: {share:.2f} of the way to the haze"
            assert np.abs(smoky - clear - share * towards).max() < 8, "the phase shows through"
            fits += 1
    assert fits >= 3


def test_out_of_body_scenes_carry_the_hospitals_camera(tmp_path: Path) -> None:
    a = generate_video(tmp_path / "a.mp4", seed=0, duration_s=6, hospital="hospital-a",
                       out_of_body=True, **TINY)
    c = generate_video(tmp_path / "c.mp4", seed=0, duration_s=6, hospital="hospital-c",
                       out_of_body=True, **TINY)
    assert a.scenes == c.scenes and a.scenes[0]["scene"] == "towel"
    first = a.privacy[0]["end_frame"]
    opening_a = _frames(a.path)[:first].astype(np.float64)
    opening_c = _frames(c.path)[:first].astype(np.float64)
    shift = np.abs(opening_a.mean(axis=(0, 1, 2)) - opening_c.mean(axis=(0, 1, 2)))
    assert shift.max() > 10, "another hospital tints the towel too"
    # the same scene moving the same way: what changes more from frame to frame is noise
    flicker_a = np.abs(np.diff(opening_a, axis=0)).mean()
    flicker_c = np.abs(np.diff(opening_c, axis=0)).mean()
    assert flicker_c > 1.5 * flicker_a, "and its noisier sensor shows"
