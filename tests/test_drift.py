"""The drift watch: statistics against hand-computed values, features of a hand-made event, the
trigger's crossing rule, and a shifted source on a real broker firing exactly one retrain."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as search
from hypothesis import strategies as st

from surgflow.drift.features import (
    BrightnessCache,
    per_second,
    runs,
    sample_frames,
    video_features,
)
from surgflow.drift.stats import (
    EPSILON,
    FEATURES,
    Distribution,
    chi_square,
    compare,
    feature,
    ks_pvalue,
    ks_statistic,
    merge,
    psi,
)
from surgflow.errors import UnknownName
from surgflow.training.triggers import TriggerLedger, drift_excess, evaluate_drift
from tests.training_helpers import tiny_recipe

# -- statistics ---------------------------------------------------------------------------


def test_psi_matches_the_hand_computed_value() -> None:
    # shares (0.5, 0.5) -> (0.25, 0.75): (0.25-0.5)·ln(0.25/0.5) + (0.75-0.5)·ln(0.75/0.5)
    assert psi([2, 2], [1, 3]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    # an empty reference bin is floored at EPSILON, so it counts, finitely
    want = (0.5 - 1) * math.log(0.5) + (0.5 - EPSILON) * math.log(0.5 / EPSILON)
    assert psi([4, 0], [1, 1]) == pytest.approx(want)
    with pytest.raises(ValueError, match="same bins: 2 expected weights, 3 actual"):
        psi([1, 1], [1, 1, 1])


@search(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 100.0)), min_size=1,
                max_size=12).filter(lambda c: sum(c) > 0),
       st.floats(0.01, 50.0))
def test_identical_distributions_have_no_drift(counts: list[float], scale: float) -> None:
    # the same shares, whatever the totals: PSI 0; and PSI is never negative
    assert psi(counts, [c * scale for c in counts]) == pytest.approx(0.0, abs=1e-12)
    assert psi(counts, counts[::-1]) >= -1e-12
    assert ks_statistic(counts, list(counts)) == 0.0


def test_ks_distance_and_p_match_the_reference_formulas() -> None:
    from scipy.special import kolmogorov

    # CDFs of {1,2,3} and {2,3,4} differ by 1/3 at 1, 2 and 3
    assert ks_statistic([1, 2, 3], [2, 3, 4]) == pytest.approx(1 / 3)
    assert ks_statistic([0, 0, 0], [1, 1]) == 1.0
    for d, n, m in [(0.3, 20, 30), (0.5, 6, 20), (0.9, 5, 5), (0.05, 10, 10)]:
        assert ks_pvalue(d, n, m) == pytest.approx(
            float(kolmogorov(d * math.sqrt(n * m / (n + m)))), abs=1e-6)


def test_chi_square_matches_scipy() -> None:
    from scipy.stats import chisquare

    stat, p = chi_square([0.5, 0.3, 0.2], [10, 5, 5])
    want = chisquare([10, 5, 5], [10, 6, 4])
    assert (stat, p) == pytest.approx((want.statistic, want.pvalue))
    assert chi_square([1.0], [7]) == (0.0, 1.0)


def test_features_are_looked_up_by_name_and_unknown_names_list_the_known() -> None:
    assert feature("confidence").kind == "continuous"
    with pytest.raises(UnknownName, match="unknown drift feature 'hue'; known: brightness, "
                                          "confidence, fps, phase_duration, phase_mix"):
        feature("hue")
    conf = feature("confidence")
    assert conf.bins()[0] == "0-0.1" and conf.bins()[-1] == "0.9-1"
    # outside the edges: the first and last bins; an inner edge belongs to the bin above it
    assert conf.histogram([-1.0, 0.1, 0.95, 1.0, 7.0]).tolist() == [1, 1] + [0] * 7 + [3]


def test_each_video_weighs_one_whatever_its_length() -> None:
    f = feature("confidence")
    long = Distribution.of_video(f, [0.95] * 900)
    short = Distribution.of_video(f, [0.05] * 10)
    both = merge([long, short, None])
    assert both.videos == 2 and both.counts == {"0.9-1": 1.0, "0-0.1": 1.0}
    assert len(both.sketch) == len(long.sketch) * 2
    # the same feature in another order of videos: the same comparison, drift 0
    assert compare(f, both, merge([short, long])).psi == pytest.approx(0.0)


# -- features -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    num_frames: int = 100
    fps: float = 10.0
    width: int = 64
    height: int = 48


EVENT_SEGMENTS = [
    {"start_frame": 30, "end_frame": 100, "label": "CalotTriangleDissection",
     "confidence": 0.42},
    {"start_frame": 0, "end_frame": 30, "label": "Preparation", "confidence": 0.93},
]


def test_features_of_a_hand_made_event() -> None:
    # 100 frames at 10 fps: seconds at frames 0, 10, ..., 90; 3 of Preparation, 7 of Calot
    labels, conf = per_second(EVENT_SEGMENTS, 10.0, 100)
    assert labels == ["Preparation"] * 3 + ["CalotTriangleDissection"] * 7
    assert conf.tolist() == [0.93] * 3 + [0.42] * 7
    assert runs(["a", "a", "b", "a"]) == [2, 1, 1]
    got = video_features(EVENT_SEGMENTS, Facts(), [100.0, 120.0, 140.0, 90.0])
    assert set(got) == set(FEATURES)
    assert got["confidence"].counts == pytest.approx({"0.9-1": 0.3, "0.4-0.5": 0.7})
    assert got["phase_mix"].counts == pytest.approx(
        {"Preparation": 0.3, "CalotTriangleDissection": 0.7})
    assert got["phase_duration"].counts == pytest.approx({"2-4": 0.5, "4-8": 0.5})
    assert got["resolution"].counts == {"64x48": 1.0}
    assert got["fps"].counts == {"10": 1.0}
    assert got["brightness"].counts == pytest.approx({"64-96": 0.25, "96-128": 0.5,
                                                      "128-160": 0.25})
    # seconds no segment covers are no seconds of the features
    partial = video_features(EVENT_SEGMENTS[1:], Facts(fps=25.0), [])
    assert partial["phase_mix"].counts == {"Preparation": 1.0}
    assert partial["fps"].counts == {"25": 1.0} and "brightness" not in partial


def test_brightness_is_decoded_once_per_content(tmp_path: Path, monkeypatch) -> None:
    from surgflow.data.synthetic import generate_video
    from surgflow.drift import features

    v = generate_video(tmp_path / "v.mp4", seed=1, duration_s=3, fps=10, width=64, height=64)
    assert sample_frames(30).tolist() == [1, 5, 9, 13, 16, 20, 24, 28]
    cache = BrightnessCache(tmp_path / "home")
    first = cache.get("abc", v.path, v.num_frames)
    assert len(first) == 8 and all(20 < x < 235 for x in first)

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(features, "frame_lumas", no_decoding)
    assert cache.get("abc", v.path, v.num_frames) == first


def test_the_window_is_the_latest_videos_and_a_stale_reference_bin_is_not_compared() -> None:
    from datetime import UTC, datetime, timedelta

    from surgflow.drift.reference import Reference
    from surgflow.drift.stats import Summary
    from surgflow.drift.watch import Observation, compare_window, latest
    from surgflow.training.recipe import DriftTriggerSpec

    t0 = datetime(2026, 11, 21, tzinfo=UTC)
    features = video_features(EVENT_SEGMENTS, Facts(), [100.0])
    obs = [Observation(f"v{i}", "cholecystectomy", "s", "m@1", f"e{i}",
                       t0 + timedelta(minutes=(7 * i) % 10), features) for i in range(10)]
    assert [o.video_id for o in latest(obs, 3)] == ["v1", "v4", "v7"]  # minutes 7, 8, 9
    reference = Reference("m@1", ["cholecystectomy@1"], ["r"], Summary.of([features]), "now")
    report = compare_window(reference.summary, 1, latest(obs, 5), DriftTriggerSpec(),
                            procedure="cholecystectomy", source="s", model="m@1")
    assert report.videos == 5 and max(report.psi.values()) == pytest.approx(0.0)
    assert not report.drifted and report.as_json()["max_psi"]["psi"] == pytest.approx(0.0)
    stored = reference.as_json()
    assert Reference.from_json(stored) == reference
    stored["bins"]["confidence"] = ["0-0.5", "0.5-1"]  # written when the edges were others
    assert "confidence" not in Reference.from_json(stored).summary.features
    # a source the version was trained on is compared with its own videos, another with all
    other = Summary.of([video_features(EVENT_SEGMENTS, Facts(), [10.0])])
    split = Reference("m@1", ["cholecystectomy@1"], ["r", "q"], reference.summary, "now",
                      {"s": (other, 1)})
    assert split.of_source("s") == (other, 1, "s")
    assert split.of_source("new") == (reference.summary, 2, None)
    assert Reference.from_json(split.as_json()) == split


# -- the trigger rule ---------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    procedure: str
    source: str
    model: str
    videos: int
    psi: dict


def test_drift_excess_needs_enough_videos_and_a_psi_above_the_threshold() -> None:
    from surgflow.training.recipe import DriftTriggerSpec

    spec = DriftTriggerSpec(psi_above=0.2, min_videos=5)
    assert drift_excess(spec, 5, {"fps": 0.0, "confidence": 0.41}) == ("confidence", 0.41)
    assert drift_excess(spec, 4, {"confidence": 0.41}) is None, "too few videos"
    assert drift_excess(spec, 50, {"confidence": 0.2}) is None, "not above"
    assert drift_excess(spec, 50, {}) is None


def test_a_drifted_source_fires_once_per_crossing(tmp_path: Path) -> None:
    recipe = tiny_recipe(name="watched", triggers={"drift": {"psi_above": 0.2}})
    ledger = TriggerLedger(tmp_path)

    def look(psi_value: float, videos: int = 6, model: str = "cholecystectomy-phase@1",
             source: str = "hospital-c") -> list[dict]:
        return evaluate_drift(recipe, tmp_path, [Report("cholecystectomy", source, model,
                                                        videos, {"confidence": psi_value})])

    (first,) = look(0.41)
    assert first["reasons"] == ["drift"]
    assert first["cause"] == "drift:cholecystectomy:hospital-c@cholecystectomy-phase@1#1"
    assert first["why"] == "drift: hospital-c confidence PSI 0.41 > 0.20 over 6 videos"
    assert look(0.55, videos=9) == [], "still drifted: fired already"
    assert look(0.1) == [], "back under the threshold: no firing"
    (again,) = look(0.3)
    assert again["cause"].endswith("#2"), "crossed again"
    (other,) = look(0.3, model="cholecystectomy-phase@2")
    assert other["cause"] == "drift:cholecystectomy:hospital-c@cholecystectomy-phase@2#1"
    assert look(0.9, source="hospital-a", videos=2) == [], "too few videos"
    assert [f["cause"][-1] for f in ledger.firings("watched")] == ["1", "2", "1"]
    # drift firings record no footprint: the data triggers' baseline is not theirs
    assert ledger.last_fired("watched") is None
    # a recipe without a drift trigger, or of another procedure, never fires on drift
    plain = tiny_recipe(name="plain")
    assert evaluate_drift(plain, tmp_path, [Report("cholecystectomy", "x", "m@1", 9,
                                                   {"confidence": 5.0})]) == []
    assert evaluate_drift(recipe, tmp_path, [Report("appendectomy", "x", "m@1", 9,
                                                    {"confidence": 5.0})]) == []


def test_data_triggers_keep_working_beside_drift_states(tmp_path: Path) -> None:
    from surgflow.training.triggers import Footprint

    recipe = tiny_recipe(name="both", triggers={"growth_factor": 1.5, "drift": {}})
    ledger = TriggerLedger(tmp_path)
    assert evaluate_drift(recipe, tmp_path, [Report("cholecystectomy", "s", "m@1", 9,
                                                    {"fps": 3.0})])
    grown = ledger.claim(recipe, Footprint(1600, frozenset({"a"})),
                         Footprint(1000, frozenset({"a"})), cause="cholecystectomy@3")
    assert grown is not None and grown["reasons"] == ["growth"]
    assert ledger.drift_states("both")["drift:cholecystectomy:s@m@1"]["drifted"] is True
    assert ledger.last_fired("both") == Footprint(1600, frozenset({"a"}))


# -- the watch on a real broker -----------------------------------------------------------



# -- the watch on a real broker -----------------------------------------------------------


def _videos(root: Path, hospital: str, n: int, seed: int, **size) -> list:
    from surgflow.data.synthetic import generate_video

    return [generate_video(root / f"{hospital}-new-{i}.mp4", seed=seed + i, duration_s=12,
                           fps=10, gop=10, hospital=hospital, **size) for i in range(n)]


def _events(runner, videos, version: int, minutes: int) -> list[dict]:
    from datetime import timedelta

    from surgflow.serving.events import inference_event
    from tests.feedback_helpers import T0
    from tests.serving_helpers import NAME

    return [inference_event(video_id=v.video_id, procedure="cholecystectomy", model_name=NAME,
                            version=version,
                            segments=runner.analyze(v.path).timeline.segments(runner.spec.labels),
                            produced_at=T0 + timedelta(minutes=minutes + i))
            for i, v in enumerate(videos)]


def _publish(settings, events: list[dict]) -> None:
    from surgflow.feedback.client import Publisher

    with Publisher.from_settings(settings) as pub:
        for e in events:
            pub.inference(e)
        pub.flush()


@dataclass(frozen=True)
class Stream:
    """A home whose production chain was trained on hospital-a, and inference events of new
    hospital-a and hospital-c videos published (not yet read)."""

    settings: object
    version: int
    ref: str
    events: list


def _stream(kafka, bundle, tmp_path: Path, n: int = 6) -> Stream:
    from surgflow.config import get_settings
    from surgflow.data.registry import VideoRegistry
    from surgflow.feedback.broker import ensure_topics
    from surgflow.inference import ChainRunner
    from tests.serving_helpers import NAME, promote, register_bundle

    home = kafka.home
    # production is the tiny chain, trained on hospital-a's 64 px videos of cholecystectomy@1
    shutil.copytree(bundle.home / "datasets", home / "datasets")
    settings = get_settings()
    version = register_bundle(settings, bundle.bundle_dir, recipe_name=bundle.recipe.name,
                              recipe=bundle.recipe.model_dump(mode="json"))
    promote(settings, version)
    # new videos: hospital-a as trained on, and hospital-c (another size, tint, brightness)
    same = _videos(tmp_path / "a", "hospital-a", n, 500, width=64, height=64)
    shifted = _videos(tmp_path / "c", "hospital-c", n, 700)
    videos = VideoRegistry(home, settings.resolved_video_roots())
    for v in same + shifted:
        videos.register(v.path.as_uri(), "cholecystectomy", v.hospital)
    runner = ChainRunner.load(bundle.bundle_dir)
    events = _events(runner, same, version, 0) + _events(runner, shifted, version, 10)
    privacy = {**events[0], "event_id": "oob-1", "procedure": "privacy",
               "model": {"name": "privacy-outofbody", "version": 1},
               "segments": [{"start_frame": 0, "end_frame": 120, "label": "InBody",
                             "confidence": 0.9}]}
    ensure_topics(kafka.bootstrap, [settings.topic("inference")], 3)
    _publish(settings, [*events, privacy])
    return Stream(settings, version, f"{NAME}@{version}", events)


#: Windows of 6 twelve-second videos against a reference of 6 are tiny next to production
#: (50 videos of an hour against 20): PSI's sampling noise alone reaches ~0.4 here (the tiny
#: chain's confidence over new hospital-a videos, measured over seeds), so the watched recipe
#: judges at 1.0, where the unshifted source (below 0.5) and the shifted one (above 2 on three
#: features) are far apart.
WATCHED = {"drift": {"psi_above": 1.0, "min_videos": 5}}


@pytest.mark.integration
def test_a_shifted_source_fires_one_retrain_and_a_replay_fires_nothing(
        kafka, tiny_chain_bundle, tmp_path: Path) -> None:
    from surgflow.drift.reference import summarise_release
    from surgflow.drift.watch import watch
    from surgflow.registry import ModelRegistry
    from tests.cli_helpers import cli_error, run_cli
    from tests.serving_helpers import NAME

    home = kafka.home
    stream = _stream(kafka, tiny_chain_bundle, tmp_path)
    settings, version, ref = stream.settings, stream.version, stream.ref

    # its reference: the chain over its own training view (4 train + 2 val videos), stored
    # beside its seals and attached to its MLflow run; asking again returns the stored one
    reference = summarise_release(settings, NAME, version)
    stored = home / "registry" / NAME / "drift" / f"{version}.json"
    assert stored.is_file() and reference.model == ref and len(reference.videos) == 6
    assert summarise_release(settings, NAME, version) == reference
    registry = ModelRegistry(settings)
    run_id = registry.get(NAME, version).run_id
    assert [f.path for f in registry.client.list_artifacts(run_id, "drift")] == [
        f"drift/{version}.json"]

    recipe = tiny_recipe(name="watched", triggers=WATCHED)
    rule = recipe.triggers.drift
    first = watch(settings, thresholds=rule)
    assert (first.read, first.observed, first.skipped["privacy"]) == (13, 12, 1)
    by_source = {r.source: r for r in first.reports}
    assert sorted(by_source) == ["hospital-a", "hospital-c"]
    a, c = by_source["hospital-a"], by_source["hospital-c"]
    assert (a.videos, c.videos, a.model, c.model) == (6, 6, ref, ref)
    assert (a.reference_source, c.reference_source) == ("hospital-a", None), "C is new"
    assert not a.drifted and max(a.psi.values()) < 0.5, a.as_json()
    assert c.drifted and c.psi["resolution"] > 2 and c.psi["brightness"] > 2, c.as_json()
    assert a.psi["resolution"] == pytest.approx(0.0) and a.psi["fps"] == pytest.approx(0.0)
    assert c.features["resolution"].p < 1e-6, "another frame size in every video"

    (fired,) = evaluate_drift(recipe, home, first.reports)
    assert fired["cause"] == f"drift:cholecystectomy:hospital-c@{ref}#1"
    assert fired["reasons"] == ["drift"] and fired["why"].startswith("drift: hospital-c ")

    # the same events again: nothing new is observed, the counts stay, nothing fires
    _publish(settings, stream.events)
    again = watch(settings, thresholds=rule)
    assert (again.read, again.observed, again.already) == (25, 0, 24)
    assert [r.as_json() for r in again.reports] == [r.as_json() for r in first.reports]
    assert evaluate_drift(recipe, home, again.reports) == []
    assert len(TriggerLedger(home).firings("watched")) == 1

    # the command judges by the trigger's defaults (PSI above 0.2 over 5 videos)
    shown = run_cli("drift", "show", "cholecystectomy", json=True).data
    assert [(s["source"], s["videos"], s["features"]) for s in shown] == [
        (r.source, r.videos, r.as_json()["features"]) for r in again.reports]
    assert shown[1]["drifted"] is True and shown[1]["psi_above"] == 0.2
    assert "unknown procedure 'appendix'" in cli_error(2, "drift", "show", "appendix")
    assert "not a phase model" in cli_error(2, "drift", "show", "privacy")

    # drift alone teaches nothing: the retrain it starts trains once labels changed a view
    from surgflow.registry.periodic import views_unchanged_reason

    trained = tiny_chain_bundle.recipe
    trained = trained.model_copy(update={"data": trained.data.model_copy(
        update={"sources": ["cholecystectomy"]})})
    why = views_unchanged_reason(trained, home)
    assert why is not None and why.startswith(f"nothing new to train from since {ref}"), why
    _label_one_of(settings, "hospital-c", split="train")
    assert views_unchanged_reason(trained, home) is None, "C's labels are in the train view"


def _label_one_of(settings, source: str, split: str) -> None:
    """A person labels (every frame of) one of ``source``'s registered videos in ``split``."""
    from datetime import UTC, datetime

    from surgflow.data.labels import LabelEvent, LabelSegment
    from surgflow.data.registry import VideoRegistry
    from surgflow.data.splits import split_of
    from surgflow.data.versions import DatasetStore

    videos = VideoRegistry(settings.home, settings.resolved_video_roots())
    record = next(r for r in videos.list()
                  if r.source == source and split_of(r.video_id) == split)
    event = LabelEvent(f"label-{record.video_id}", record.video_id, "human", datetime.now(UTC),
                       0, 0, (LabelSegment(0, record.num_frames, "Preparation"),))
    DatasetStore(settings.home).commit("cholecystectomy", videos=[record], events=[event],
                                       offsets={})


@pytest.mark.integration
@pytest.mark.slow
def test_the_drift_flow_announces_one_retrain_and_publishes_its_report(
        prefect_server, kafka, tiny_chain_bundle, tmp_path: Path) -> None:
    import yaml
    from prefect.artifacts import Artifact

    from surgflow_flows.drift import drift_watch

    _stream(kafka, tiny_chain_bundle, tmp_path, n=5)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name, triggers in [("watched", WATCHED), ("unwatched", {})]:
        (recipes / f"{name}.yaml").write_text(yaml.safe_dump(
            tiny_recipe(name=name, triggers=triggers).model_dump(mode="json")))
    first = drift_watch(str(recipes))
    assert [(f["recipe"], f["reasons"]) for f in first["firings"]] == [("watched", ["drift"])]
    assert drift_watch(str(recipes))["firings"] == []
    report = sorted((kafka.home / "reports" / "drift").glob("drift-*.html"))
    assert report and "hospital-c" in report[-1].read_text()
    artifact = Artifact.get("drift-watch")
    assert artifact is not None and "| cholecystectomy | hospital-c |" in str(artifact.data)
