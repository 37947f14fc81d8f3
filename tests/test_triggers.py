"""Data triggers: growth and new-source crossings fire once per crossing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from surgflow.training.recipe import TriggerSpec
from surgflow.training.triggers import Footprint, TriggerLedger, baseline, crossings
from tests.training_helpers import tiny_recipe

GROWTH = TriggerSpec(growth_factor=1.5)
SOURCES = TriggerSpec(new_source=True)


def fp(frames: int, *sources: str) -> Footprint:
    return Footprint(frames, frozenset(sources))


def test_growth_crosses_at_the_factor_not_before() -> None:
    last = fp(1000, "a")
    assert crossings(GROWTH, fp(1499, "a"), last) == []
    assert crossings(GROWTH, fp(1500, "a"), last) == ["growth"]
    assert crossings(GROWTH, fp(5000, "a"), None) == [], "no growth from nothing"


def test_new_source_crosses_only_for_an_unseen_source() -> None:
    assert crossings(SOURCES, fp(10, "a"), fp(10, "a", "b")) == []
    assert crossings(SOURCES, fp(10, "a", "c"), fp(10, "a", "b")) == ["new_source"]
    assert crossings(SOURCES, fp(10, "a"), None) == ["new_source"], "never trained"
    assert crossings(SOURCES, fp(0), None) == [], "nothing labelled yet"


def test_disabled_triggers_never_cross() -> None:
    assert crossings(TriggerSpec(), fp(10**6, "z"), fp(1, "a")) == []


def test_baseline_takes_the_most_frames_and_every_source() -> None:
    assert baseline(None, None) is None
    assert baseline(fp(10, "a"), fp(30, "b"), None) == fp(30, "a", "b")


def test_a_crossing_fires_once_and_later_versions_compare_with_the_firing(
        tmp_path: Path) -> None:
    recipe = tiny_recipe(triggers={"growth_factor": 1.5, "new_source": True})
    ledger = TriggerLedger(tmp_path)
    trained = fp(1000, "a")
    first = ledger.claim(recipe, fp(1600, "a"), trained, cause="cholecystectomy@3")
    assert first is not None and first["reasons"] == ["growth"]
    assert "1000 → 1600" in first["why"]
    # the same event again, and a later version that grew less than 1.5× the firing's 1600
    assert ledger.claim(recipe, fp(1600, "a"), trained, cause="cholecystectomy@3") is None
    assert ledger.claim(recipe, fp(2000, "a"), trained, cause="cholecystectomy@4") is None
    second = ledger.claim(recipe, fp(2100, "a", "b"), trained, cause="cholecystectomy@5")
    assert second is not None and second["reasons"] == ["new_source"]
    assert [f["cause"] for f in ledger.firings(recipe.name)] == [
        "cholecystectomy@3", "cholecystectomy@5"]


def test_concurrent_evaluators_of_one_crossing_fire_once(tmp_path: Path) -> None:
    recipe = tiny_recipe(triggers={"growth_factor": 2.0})
    barrier = threading.Barrier(8)
    fired = []

    def evaluate(i: int) -> None:
        barrier.wait()
        got = TriggerLedger(tmp_path).claim(recipe, fp(300, "a"), fp(100, "a"),
                                            cause=f"cholecystectomy@{2 + i % 2}")
        if got:
            fired.append(got)

    threads = [threading.Thread(target=evaluate, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fired) == 1, fired


def test_a_new_version_pins_its_own_dataset_and_leaves_the_others_as_named() -> None:
    from surgflow.training.triggers import pinned_to

    recipe = tiny_recipe(data={"sources": ["cholecystectomy", "cholecystectomy-extra@2",
                                           "appendectomy@1"]})
    assert pinned_to(recipe, "cholecystectomy", 4) == [
        "cholecystectomy@4", "cholecystectomy-extra@2", "appendectomy@1"]
    assert pinned_to(recipe, "appendectomy", 3)[2] == "appendectomy@3"


def test_footprint_of_a_recipe_view_counts_its_labelled_frames(tmp_path: Path) -> None:
    from surgflow.data.versions import DatasetStore
    from surgflow.training.triggers import recipe_footprint, trained_footprint
    from tests.training_helpers import labelled_home

    home = labelled_home(tmp_path, n_train=2, n_val=1, duration_s=4, size=32)
    recipe = tiny_recipe()
    got = recipe_footprint(recipe, home)
    m = DatasetStore(home).manifest("cholecystectomy")
    assert got == fp(m.provenance_frames["human"], "hospital-a")
    assert trained_footprint(recipe, home) is None


@pytest.mark.integration
def test_trigger_flow_fires_once_per_version_however_often_it_runs(
        prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replayed version event (a restarted deployment, a redelivered event) fires nothing."""
    import yaml

    from surgflow_flows.triggers import check_triggers
    from tests.training_helpers import labelled_home

    home = labelled_home(tmp_path, n_train=2, n_val=1, duration_s=4, size=32)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    recipe = tiny_recipe(name="retrained", triggers={"new_source": True, "growth_factor": 2.0})
    (recipes / "r.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    (recipes / "other.yaml").write_text(yaml.safe_dump(
        tiny_recipe(name="other", data={"sources": ["appendectomy"]}).model_dump(mode="json")))
    monkeypatch.setenv("SURGFLOW_HOME", str(home))
    first = check_triggers("cholecystectomy", 1, str(recipes))
    assert [(f["recipe"], f["reasons"]) for f in first] == [("retrained", ["new_source"])]
    assert check_triggers("cholecystectomy", 1, str(recipes)) == []
    assert len(TriggerLedger(home).firings("retrained")) == 1
