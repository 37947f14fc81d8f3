"""The training flow: prepare the run → train on the Dask cluster → record it.

Thin over :mod:`surgflow.training.pipeline`. Parameters are a pydantic model, so the Prefect
server validates them against the flow's schema (deployments enforce it). While the DDP group
trains, each finished epoch updates a progress artifact and a table artifact of the metrics,
read from the run's MLflow run (where the ranks log them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from pydantic import BaseModel, Field

from surgflow.config import get_settings
from surgflow.errors import BadInput
from surgflow.evaluation.thresholds import parse_gate
from surgflow.training.cluster import connect
from surgflow.training.pipeline import execute_run, load_run_recipe, prepare_run
from surgflow.training.recipe import load_recipe
from surgflow.training.runs import RunStore


class TrainingParams(BaseModel):
    """What a training flow run needs: a recipe file, or a run to resume."""

    recipe_path: str | None = Field(default=None, description="YAML recipe file")
    resume_run: str | None = Field(default=None, description="id of an unfinished run")


class _EpochArtifacts:
    """Publishes each newly finished epoch of a run as Prefect artifacts."""

    def __init__(self, home: Path, run_id: str, total_epochs: int):
        self.store, self.run_id, self.total = RunStore(home), run_id, total_epochs
        self.key = re.sub(r"[^a-z0-9-]+", "-", f"training-{run_id}".lower())[:100]
        self.seen = 0
        self.progress_id = create_progress_artifact(
            0.0, key=f"{self.key}-progress", description=f"epochs of run {run_id}")

    def __call__(self) -> None:
        # called twice a second while the group trains: read the epoch records only when a new
        # one has appeared
        if self.store.epoch_count(self.run_id) == self.seen:
            return
        epochs = self.store.epochs(self.run_id)
        self.seen = len(epochs)
        update_progress_artifact(self.progress_id,
                                 100.0 * min(1.0, self.seen / max(self.total, 1)))
        # an epoch read while rank 0 is still logging it (or the temporal stage's epoch 0,
        # the encoder alone, which has no training figures) shows what it has so far
        rows = [{"stage": e["stage"], "epoch": e["epoch"],
                 "train_loss": _rounded(e, "train", "loss"),
                 "train_accuracy": _rounded(e, "train", "accuracy"),
                 "val_loss": _rounded(e, "val", "loss"),
                 "val_accuracy": _rounded(e, "val", "accuracy"),
                 "val_macro_f1": _rounded(e, "val", "macro_f1"),
                 "samples_per_s": _rounded(e, "train", "samples_per_s", 1)} for e in epochs]
        create_table_artifact(rows, key=f"{self.key}-metrics",
                              description=f"per-epoch metrics of run {self.run_id}")


def _rounded(epoch: dict[str, Any], part: str, key: str, digits: int = 4) -> float | None:
    v = (epoch.get(part) or {}).get(key)
    return round(v, digits) if isinstance(v, (int, float)) else None


@task(name="prepare-run")
def prepare(params: TrainingParams) -> str:
    home = get_settings().home
    if params.resume_run:
        return prepare_run(load_run_recipe(home, params.resume_run), home,
                           resume=params.resume_run)
    if not params.recipe_path:
        raise BadInput("training flow: give params.recipe_path or params.resume_run")
    recipe = load_recipe(params.recipe_path)
    parse_gate(recipe.gate, f"recipe {params.recipe_path}")  # its verdict's thresholds, now
    return prepare_run(recipe, home, recipe_path=str(Path(params.recipe_path).resolve()),
                       resolve_production=production_bundle)


def production_bundle(procedure: str) -> Path:
    """The local, hash-checked bundle of ``procedure``'s production chain (for a recipe that
    reuses one of its stages); BadInput when the procedure has no production model yet."""
    from surgflow.registry import ModelRegistry, model_name

    registry, name = ModelRegistry(), model_name(procedure)
    version = registry.production(name)
    if version is None:
        raise BadInput(f"the recipe reuses a stage of the production chain, but {name} has no "
                       "production version yet; train it whole first")
    return registry.bundle(name, version)


@task(name="train-run")
def train(run_id: str) -> dict[str, Any]:
    home = get_settings().home
    recipe = load_run_recipe(home, run_id)
    # stages taken from production train no epochs
    total = (0 if recipe.model.reused else recipe.optim.epochs) + (
        recipe.temporal.optim.epochs if recipe.temporal and not recipe.temporal.reused else 0)
    report = _EpochArtifacts(home, run_id, total)
    res = recipe.resources
    with connect(res.world_size, gpus_per_worker=res.gpus_per_rank) as client:
        record = execute_run(run_id, home, client, on_tick=report)
    report()
    return record


@flow(name="surgflow-training", validate_parameters=True)
def training_flow(params: TrainingParams) -> dict[str, Any]:
    """Train one recipe (or resume one run) and return its run record."""
    run_id = prepare(params)
    return train(run_id)
