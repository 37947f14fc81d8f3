"""One recipe's pipeline: train it (DDP on Dask, one GPU slot held), then release the result.

:func:`recipe_pipeline` is what the nightly build gathers per recipe file and what a recipe's
deployment runs when its data trigger fires or its own cron comes round. Training holds a slot
of the Prefect global concurrency limit ``gpu`` (acquired strictly: a missing limit is an error,
never silently unlimited), so concurrent pipelines never oversubscribe the cluster's GPUs;
release (export, gate) runs outside the slot. A periodic run (``skip_unchanged``) first asks
:func:`surgflow.registry.periodic.skip_reason` and trains nothing when neither the recipe nor
its dataset versions changed since its latest registered model. A drift retrain (its ``cause``
a drift firing's ``why``) trains nothing when its views equal those of its latest registered
model (:func:`surgflow.registry.periodic.views_unchanged_reason`): it waits for labels.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.concurrency.asyncio import concurrency

from surgflow.evaluation.thresholds import parse_gate
from surgflow.training.recipe import load_recipe
from surgflow.training.triggers import drift_caused
from surgflow_flows.release import release_flow
from surgflow_flows.training import TrainingParams, training_flow

GPU_LIMIT = "gpu"


def row(recipe_path: str, **fields: Any) -> dict[str, Any]:
    """One row of the nightly build's summary: ``fields`` over the empty row of a recipe that
    made no candidate."""
    return {"recipe": Path(recipe_path).stem, "recipe_path": recipe_path, "run_id": None,
            "dataset_versions": None, "model": None, "verdict": None, "seal": None,
            "promoted": False, "skipped": None, "error": None} | fields


def summary(recipe_path: str, record: dict[str, Any], release: dict[str, Any]) -> dict[str, Any]:
    """The row of a recipe that trained and was released."""
    return row(recipe_path, recipe=record.get("recipe_name") or Path(recipe_path).stem,
               run_id=record["run_id"], dataset_versions=record.get("dataset_versions"),
               model=release["model"], verdict=release["verdict"], seal=release["seal"],
               promoted=bool(release.get("promoted")))


@task(name="check-unchanged")
def check_unchanged(recipe_path: str) -> dict[str, Any]:
    """The dataset versions the recipe resolves to now and why it need not train (or None)."""
    from surgflow.config import get_settings
    from surgflow.registry.periodic import skip_reason

    pinned, reason = skip_reason(load_recipe(recipe_path), get_settings().home)
    return {"dataset_versions": pinned, "skipped": reason}


@task(name="check-views-unchanged")
def check_views_unchanged(recipe_path: str) -> dict[str, Any]:
    """Why a drift retrain of the recipe need not train (or None)."""
    from surgflow.config import get_settings
    from surgflow.registry.periodic import views_unchanged_reason

    return {"skipped": views_unchanged_reason(load_recipe(recipe_path), get_settings().home)}


@flow(name="surgflow-pipeline", validate_parameters=True)
async def recipe_pipeline(recipe_path: str, promote: bool = True, cause: str | None = None,
                          skip_unchanged: bool = False) -> dict[str, Any]:
    """Train ``recipe_path`` in a GPU slot, then export, register, gate and (if approved and
    ``promote``) promote its chain; ``cause`` says what started it (a trigger, the nightly, a
    cron). With ``skip_unchanged`` (a periodic run) nothing trains when the recipe and its
    dataset versions equal those of its latest registered model, and for a drift retrain when
    its views do; the row says so."""
    log = get_run_logger()
    recipe = load_recipe(recipe_path)  # a bad recipe fails here, before a slot is taken
    parse_gate(recipe.gate, f"recipe {recipe_path}")
    log.info("pipeline for %s (%s)", recipe.name, cause or "by hand")
    check = (check_unchanged if skip_unchanged
             else check_views_unchanged if drift_caused(cause) else None)
    if check is not None:
        unchanged = await asyncio.to_thread(check, recipe_path)
        if unchanged["skipped"]:
            log.info("%s: %s", recipe.name, unchanged["skipped"])
            return row(recipe_path, recipe=recipe.name, cause=cause, **unchanged)
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
