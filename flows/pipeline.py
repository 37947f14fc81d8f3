"""One recipe's pipeline: train it (DDP on Dask, one GPU slot held), then release the result.

:func:`recipe_pipeline` is what the nightly build gathers per recipe file and what a recipe's
deployment runs when its data trigger fires. Training holds a slot of the Prefect global
concurrency limit ``gpu`` (acquired strictly: a missing limit is an error, never silently
unlimited), so concurrent pipelines never oversubscribe the cluster's GPUs; release (export,
gate) runs outside the slot.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.concurrency.asyncio import concurrency

from surgflow.training.recipe import load_recipe
from surgflow_flows.release import release_flow
from surgflow_flows.training import TrainingParams, training_flow

GPU_LIMIT = "gpu"


def summary(recipe_path: str, record: dict[str, Any], release: dict[str, Any]) -> dict[str, Any]:
    """One row of the nightly build's summary."""
    promoted = release.get("promoted")
    return {"recipe": record.get("recipe_name") or Path(recipe_path).stem,
            "recipe_path": recipe_path, "run_id": record["run_id"],
            "dataset_versions": record.get("dataset_versions"), "model": release["model"],
            "verdict": release["verdict"], "seal": release["seal"], "promoted": bool(promoted),
            "error": None}


@flow(name="surgflow-pipeline", validate_parameters=True)
async def recipe_pipeline(recipe_path: str, promote: bool = True,
                          cause: str | None = None) -> dict[str, Any]:
    """Train ``recipe_path`` in a GPU slot, then export, register, gate and (if approved and
    ``promote``) promote its chain; ``cause`` says what started it (a trigger, the nightly)."""
    log = get_run_logger()
    recipe = load_recipe(recipe_path)  # a bad recipe fails here, before a slot is taken
    log.info("pipeline for %s (%s)", recipe.name, cause or "by hand")
    async with concurrency(GPU_LIMIT, occupy=1, strict=True):
        record = await asyncio.to_thread(training_flow, TrainingParams(recipe_path=recipe_path))
    release = await asyncio.to_thread(release_flow, record["run_id"], promote)
    return summary(recipe_path, record, release) | {"cause": cause}


@flow(name="surgflow-train-release", validate_parameters=True)
def train_and_release(params: TrainingParams, promote: bool = False) -> dict[str, Any]:
    """``surgflow train``: train (or resume) a run, then export, register and gate its chain;
    returns the run record with the release's ``model``, ``verdict`` and ``seal``."""
    record = training_flow(params)
    return record | {"release": release_flow(record["run_id"], promote)}


def ensure_gpu_limit(slots: int) -> None:
    """Create (or resize) the ``gpu`` global concurrency limit on the current Prefect API."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, max(1, slots))
