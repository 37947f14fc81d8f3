"""The nightly build: recipes of two procedures trained, gated and promoted concurrently under
the GPU concurrency limit; a failing recipe does not stop the others."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import yaml

from surgflow.data.splits import ids_filling_splits
from surgflow.data.synthetic import generate_video
from surgflow.data.taxonomy import ProcedureCatalog
from tests.dataset_helpers import import_labelled

pytestmark = pytest.mark.integration

APPENDECTOMY = ("Access", "Inspection", "Dissection", "Closure")


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


def _recipe(path: Path, name: str, procedure: str) -> None:
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
    (recipes / "broken.yaml").write_text("name: broken\ndata: {sources: [cholecystectomy]}\n"
                                         "model: {architecture: no-such-net}\n")
    return recipes


def test_nightly_trains_gates_and_promotes_each_procedure_and_isolates_failures(
        prefect_server: str, dask_cluster, two_procedures: Path, monkeypatch) -> None:
    from prefect import get_client

    from surgflow.registry import ModelRegistry
    from surgflow_flows.nightly import nightly_build
    from surgflow_flows.pipeline import ensure_gpu_limit

    monkeypatch.setenv("SURGFLOW_DASK_ADDRESS", dask_cluster.scheduler.address)
    ensure_gpu_limit(1)
    rows = {r["recipe"]: r for r in asyncio.run(nightly_build(str(two_procedures)))}
    assert set(rows) == {"chole-night", "appe-night", "broken"}
    assert "no-such-net" in rows["broken"]["error"] and rows["broken"]["model"] is None
    registry = ModelRegistry()
    for recipe, name in (("chole-night", "cholecystectomy-phase"),
                         ("appe-night", "appendectomy-phase")):
        row = rows[recipe]
        assert row["error"] is None, row
        assert row["model"] == f"{name}@1" and row["verdict"] == "approved"
        assert row["promoted"] is True and registry.production(name) == 1

    from prefect.artifacts import Artifact

    summary = Artifact.get("nightly-build")
    assert summary is not None and "appendectomy-phase@1" in str(summary.data)

    # with one GPU slot, the two trainings ran one after the other
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["surgflow-training"])))
    spans = sorted((r.start_time, r.end_time) for r in runs if r.state and r.state.is_completed())
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0], f"trainings overlapped under a 1-slot limit: {spans}"


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
