"""The sweep flow: a recipe's hyper-parameter sweep on the cluster, its best trial released.

Thin over :func:`surgflow.sweeps.study.run_sweep`. Each trial trains in a slot of the Prefect
global concurrency limit ``gpu`` when the limit exists (so a sweep and the nightly build never
oversubscribe the cluster together), and as many trials train at once as the limit has slots,
unless ``concurrency`` says otherwise; without the limit, one at a time. The best trial's run
goes through the release flow like any training run: export, register, gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from surgflow.config import get_settings
from surgflow.evaluation.thresholds import parse_gate
from surgflow.sweeps.study import run_sweep
from surgflow.training.recipe import load_recipe
from surgflow_flows.pipeline import GPU_LIMIT
from surgflow_flows.release import release_flow


def gpu_slots() -> int | None:
    """The slots of the ``gpu`` global concurrency limit (None: there is no such limit)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return int(client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit)
        except ObjectNotFound:
            return None


def _gpu_slot() -> Any:
    from prefect.concurrency.sync import concurrency

    return concurrency(GPU_LIMIT, occupy=1, strict=True)


@flow(name="surgflow-sweep", validate_parameters=True)
def sweep_flow(recipe_path: str, trials: int | None = None,
               concurrency: int | None = None) -> dict[str, Any]:
    """Run ``recipe_path``'s sweep until its study holds ``trials`` finished trials, then
    release the best trial's run; returns the sweep's summary."""
    log = get_run_logger()
    recipe = load_recipe(recipe_path)  # a bad recipe fails here, before anything starts
    parse_gate(recipe.gate, f"recipe {recipe_path}")
    slots = gpu_slots()
    log.info("sweep of %s: %s trials, %s at once (gpu limit: %s)", recipe.name,
             trials or (recipe.sweep.trials if recipe.sweep else "?"), concurrency or slots or 1,
             slots if slots is not None else "none")
    return run_sweep(get_settings(), recipe, str(Path(recipe_path).resolve()), trials=trials,
                     concurrency=concurrency or slots or 1,
                     release=lambda run_id: release_flow(run_id),
                     hold=_gpu_slot if slots is not None else None)
