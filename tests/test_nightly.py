"""The nightly build: one owner per recipe's periodic run, no retraining of what did not change,
recipes of two procedures trained, gated and promoted under the GPU concurrency limit, and a
failing recipe that does not stop the others.

The periodic-run decisions are pure (:mod:`surgflow.registry.periodic`) and tested first on
plain data; the build itself runs on the session's real Prefect server and Dask cluster, and
counts only the training runs it started (by a tag unique to each build), whatever ran before.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from surgflow.data.splits import ids_filling_splits
from surgflow.data.synthetic import generate_video
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.errors import NotFound
from surgflow.registry.artifacts import ArtifactMismatch
from surgflow.registry.model import ModelVersion
from surgflow.registry.periodic import (
    NIGHTLY,
    Trained,
    latest_trained,
    periodic_owner,
    recipe_digest,
    unchanged_since,
)
from tests.dataset_helpers import import_labelled
from tests.training_helpers import tiny_recipe

APPENDECTOMY = ("Access", "Inspection", "Dissection", "Closure")
CRON = "0 3 * * *"

# -- the decisions, on plain data -----------------------------------------------------------


def test_a_recipe_with_its_own_cron_owns_its_periodic_run() -> None:
    assert periodic_owner(tiny_recipe(name="own", triggers={"cron": CRON})) == "recipe-own"
    assert periodic_owner(tiny_recipe(name="shared", triggers={"growth_factor": 2.0})) == NIGHTLY


def test_unchanged_only_when_recipe_and_every_dataset_version_match_the_latest_model() -> None:
    digest = recipe_digest(tiny_recipe().model_dump(mode="json"))
    latest = Trained("cholecystectomy-phase@4", ("cholecystectomy@3", "extra@1"), digest)
    why = unchanged_since(["cholecystectomy@3", "extra@1"], digest, latest)
    assert why is not None and why.startswith("unchanged since cholecystectomy-phase@4")
    assert "cholecystectomy@3, extra@1" in why
    assert unchanged_since(["cholecystectomy@4", "extra@1"], digest, latest) is None, "new data"
    assert unchanged_since(["cholecystectomy@3"], digest, latest) is None, "a source dropped"
    assert unchanged_since(["cholecystectomy@3", "extra@1"], "other", latest) is None, "recipe"
    assert unchanged_since(["cholecystectomy@3"], digest, None) is None, "never registered"
    unreadable = Trained("cholecystectomy-phase@4", ("cholecystectomy@3",), None)
    assert unchanged_since(["cholecystectomy@3"], digest, unreadable) is None


def test_recipe_digest_counts_what_trains_and_nothing_else() -> None:
    base = recipe_digest(tiny_recipe().model_dump(mode="json"))
    same = [tiny_recipe(description="reworded"), tiny_recipe(triggers={"cron": CRON}),
            tiny_recipe(data={"sources": ["cholecystectomy@3"]})]
    assert all(recipe_digest(r.model_dump(mode="json")) == base for r in same)
    other = [tiny_recipe(optim={"lr": 0.02}), tiny_recipe(data={"min_confidence": 0.5}),
             tiny_recipe(gate={"min": {"accuracy": 0.9}})]
    assert all(recipe_digest(r.model_dump(mode="json")) != base for r in other)


def _version(version: int, recipe: str, datasets: list[str]) -> ModelVersion:
    return ModelVersion(name="cholecystectomy-phase", version=version,
                        created_at=datetime(2026, 1, version, tzinfo=UTC), run_id=f"r{version}",
                        recipe=recipe, stages=[], verdict=None, dataset_versions=datasets,
                        metrics={}, artifacts=[])


class _Registry:
    """The two reads :func:`latest_trained` makes, over versions held in memory."""

    def __init__(self, versions: list[ModelVersion], recipes: dict[int, Any]):
        self.versions, self.recipes = versions, recipes

    def list(self, name: str) -> list[ModelVersion]:
        if not self.versions:
            raise NotFound(f"unknown model {name!r}")
        return [v for v in self.versions if v.name == name]

    def recipe(self, name: str, version: int) -> dict:
        got = self.recipes[version]
        if isinstance(got, Exception):
            raise got
        return got


def test_latest_trained_is_the_recipes_own_latest_version() -> None:
    mine = tiny_recipe(name="mine")
    stored = mine.model_copy(update={"data": mine.data.model_copy(
        update={"sources": ["cholecystectomy@2"]})}).model_dump(mode="json")
    registry = _Registry(
        [_version(1, "mine", ["cholecystectomy@1"]), _version(2, "mine", ["cholecystectomy@2"]),
         _version(3, "theirs", ["cholecystectomy@2"])],
        {1: {}, 2: stored, 3: {}})
    got = latest_trained(registry, mine)  # type: ignore[arg-type]
    assert got == Trained("cholecystectomy-phase@2", ("cholecystectomy@2",),
                          recipe_digest(mine.model_dump(mode="json")))
    assert latest_trained(_Registry([], {}), mine) is None  # type: ignore[arg-type]
    assert latest_trained(registry, tiny_recipe(name="new")) is None  # type: ignore[arg-type]
    altered = _Registry([_version(1, "mine", ["cholecystectomy@1"])],
                        {1: ArtifactMismatch("cholecystectomy-phase@1: recipe.json altered")})
    assert latest_trained(altered, mine).recipe_digest is None  # type: ignore[arg-type]


# -- the build, on Prefect and Dask ---------------------------------------------------------


def _dataset(home: Path, root: Path, procedure: str, labels: tuple[str, ...] | None,
             seed: int) -> None:
    videos = []
    for i, vid in ids_filling_splits({"train": 2, "val": 1, "test": 1},
                                     lambda i: f"{procedure[:4]}-{seed}-{i:03d}"):
        kw = {"labels": labels, "procedure": procedure} if labels else {}
        v = generate_video(root / f"{vid}.mp4", seed=seed * 100 + i, duration_s=8, fps=10,
                           width=48, height=48, gop=10, **kw)
        videos.append(v.path)
    result = import_labelled(home, [root], videos, procedure, "hospital-a")
    assert result.version == 1


def _recipe(path: Path, name: str, procedure: str, cron: str | None = None) -> None:
    path.write_text(yaml.safe_dump({
        "name": name, "procedure": procedure,
        "data": {"sources": [procedure], "min_confidence": None},
        "clip": {"frames": 1, "stride": 1, "fps": 2, "size": 32},
        "model": {"architecture": "tiny2d"},
        "temporal": {"architecture": "mstcn", "stages": 1, "layers": 3, "channels": 8,
                     "optim": {"epochs": 2, "batch_size": 1, "lr": 0.005,
                               "optimizer": "adam", "schedule": "constant"}},
        "optim": {"epochs": 1, "batch_size": 16, "lr": 0.01},
        "resources": {"world_size": 1, "threads_per_rank": 1, "rendezvous_timeout_s": 60},
        "gate": {"min": {"accuracy": 0.0}, "chain_vs_encoder": False, "bootstrap": None},
        "triggers": {"cron": cron, "growth_factor": 2.0},
    }))


@pytest.fixture
def two_procedures(surgflow_home: Path, tmp_path: Path) -> Path:
    from surgflow.data.pins import pin

    ProcedureCatalog(surgflow_home).add("appendectomy", list(APPENDECTOMY))
    _dataset(surgflow_home, tmp_path / "videos", "cholecystectomy", None, 1)
    _dataset(surgflow_home, tmp_path / "videos", "appendectomy", APPENDECTOMY, 2)
    for procedure in ("cholecystectomy", "appendectomy"):
        pin(surgflow_home, procedure, 1)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    _recipe(recipes / "chole.yaml", "chole-night", "cholecystectomy")
    _recipe(recipes / "appe.yaml", "appe-night", "appendectomy")
    _recipe(recipes / "own.yaml", "chole-own-cron", "cholecystectomy", cron=CRON)
    (recipes / "broken.yaml").write_text("name: broken\ndata: {sources: [cholecystectomy]}\n"
                                         "model: {architecture: no-such-net}\n")
    return recipes


def _build(recipes: Path, **kw: Any) -> tuple[dict[str, dict], Counter, list, str]:
    """One nightly build: its rows by recipe, how many training runs it started per recipe
    file, their (start, end) spans, and its summary artifact's data. Both are found by this
    build's own ids (a tag only it carries, its flow run), never by name alone."""
    from prefect import get_client, tags
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterTags,
    )

    from surgflow_flows.nightly import nightly_build

    tag = f"nightly-test-{uuid.uuid4().hex[:12]}"
    with tags(tag):
        state = asyncio.run(nightly_build(str(recipes), return_state=True, **kw))
    rows = {r["recipe"]: r for r in state.result()}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["surgflow-training"])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["nightly-build"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    trained = Counter(Path(r.parameters["params"]["recipe_path"]).stem for r in runs)
    spans = sorted((r.start_time, r.end_time) for r in runs if r.state and r.state.is_completed())
    return rows, trained, spans, str(artifact.data)


@pytest.mark.integration
def test_nightly_trains_each_recipe_it_owns_once_and_nothing_unchanged(
        prefect_server: str, dask_cluster, two_procedures: Path, monkeypatch) -> None:
    from surgflow.registry import ModelRegistry
    from surgflow_flows.pipeline import ensure_gpu_limit

    monkeypatch.setenv("SURGFLOW_DASK_ADDRESS", dask_cluster.scheduler.address)
    ensure_gpu_limit(1)
    rows, trained, spans, summary = _build(two_procedures)
    assert set(rows) == {"chole-night", "appe-night", "chole-own-cron", "broken"}
    # the recipe with its own cron is its deployment's to run: the nightly trains it not at all
    assert trained == Counter({"chole": 1, "appe": 1}), trained
    own = rows["chole-own-cron"]
    assert own["model"] is None and own["error"] is None
    assert own["skipped"] == f"periodic run owned by deployment recipe-chole-own-cron (cron {CRON})"
    assert "no-such-net" in rows["broken"]["error"] and rows["broken"]["model"] is None
    registry = ModelRegistry()
    for recipe, name in (("chole-night", "cholecystectomy-phase"),
                         ("appe-night", "appendectomy-phase")):
        row = rows[recipe]
        assert row["error"] is None and row["skipped"] is None, row
        assert row["model"] == f"{name}@1" and row["verdict"] == "approved"
        assert row["promoted"] is True and registry.production(name) == 1
    assert "appendectomy-phase@1" in summary and "recipe-chole-own-cron" in summary
    # with one GPU slot, the two trainings ran one after the other
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0], f"trainings overlapped under a 1-slot limit: {spans}"

    # no new data: nothing trains, and every row says why
    rows, trained, _, summary = _build(two_procedures)
    assert trained == Counter(), f"an unchanged build trained {dict(trained)}"
    assert rows["chole-night"]["skipped"].startswith("unchanged since cholecystectomy-phase@1")
    assert rows["appe-night"]["skipped"].startswith("unchanged since appendectomy-phase@1")
    assert rows["chole-night"]["dataset_versions"] == ["cholecystectomy@1"]
    assert rows["chole-own-cron"]["skipped"].startswith("periodic run owned by deployment")
    assert "no-such-net" in rows["broken"]["error"]
    assert not any(r["promoted"] or r["model"] for r in rows.values())
    assert "unchanged since cholecystectomy-phase@1" in summary
    assert "unchanged since appendectomy-phase@1" in summary

    # --force trains an unchanged recipe anyway (once)
    alone = two_procedures.parent / "alone"
    alone.mkdir()
    (alone / "chole.yaml").write_text((two_procedures / "chole.yaml").read_text())
    rows, trained, _, _ = _build(alone, force=True, promote=False)
    assert trained == Counter({"chole": 1})
    assert rows["chole-night"]["model"] == "cholecystectomy-phase@2"


@pytest.mark.integration
def test_a_missing_gpu_limit_is_an_error_not_unlimited(prefect_server: str,
                                                       two_procedures: Path) -> None:
    from prefect import get_client
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.exceptions import ObjectNotFound

    from surgflow_flows.pipeline import GPU_LIMIT, recipe_pipeline

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
    with pytest.raises(ConcurrencySlotAcquisitionError, match=GPU_LIMIT):
        asyncio.run(recipe_pipeline(str(two_procedures / "chole.yaml"), promote=False))
