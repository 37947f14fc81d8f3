"""A training run from recipe to record: prepare the run, train on the cluster, record the result.

:func:`prepare_run` resolves the recipe's data and writes the run directory (or reopens one to
resume it by hand); :func:`execute_run` launches the DDP group on the Dask cluster and records
attempts, status and result in ``run.json``. The Prefect flow and the CLI are thin over these
two calls; nothing here imports Prefect.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from surgflow.data.storage import json_bytes, write_atomic
from surgflow.errors import BadInput, SurgflowError
from surgflow.training import data
from surgflow.training.launcher import Attempt, launch
from surgflow.training.recipe import Recipe, parse_recipe
from surgflow.training.runs import RunStore, now_iso

log = logging.getLogger(__name__)


def prepare_run(recipe: Recipe, home: Path, *, resume: str | None = None,
                recipe_path: str | None = None) -> str:
    """A run ready to launch: new, or ``resume``'s unfinished run (resumed by hand).

    A new run pins the recipe's sources to the dataset versions that are latest now and
    resolves their views once, so a run with no training or validation clips fails here, before
    any worker is used.
    """
    store = RunStore(home)
    if resume is not None:
        record = store.get(resume)
        if record["status"] == "succeeded":
            raise BadInput(f"run {resume!r} already finished; start a new run instead")
        store.update(resume, status="resuming")
        return resume
    pinned = data.pin_sources(recipe.data.sources, home)
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"sources": pinned})})
    views = {}
    for split in data.SPLITS:
        view = data.resolve(recipe, pinned, split, home)
        if len(view) == 0:
            raise BadInput(
                f"recipe {recipe.name!r}: the {split} split of {', '.join(pinned)} has no "
                f"labelled clips (filter {recipe.data.filter!r}, min_confidence "
                f"{recipe.data.min_confidence})"
            )
        report = view.report()
        views[split] = {k: report[k] for k in ("videos", "clips", "digest", "labels")}
        data.write_proxies(view, home)
    run_id = store.create(recipe.name, {
        "recipe_name": recipe.name,
        "recipe_path": recipe_path,
        "recipe": recipe.model_dump(mode="json"),
        "params": {
            "world_size": recipe.resources.world_size,
            "gpus_per_rank": recipe.resources.gpus_per_rank,
            "chain": recipe.is_chain,
            "architecture": recipe.model.architecture,
            "temporal": recipe.temporal.architecture if recipe.temporal else None,
            "epochs": recipe.optim.epochs,
            "batch_size": recipe.optim.batch_size,
            "lr": recipe.optim.lr,
        },
        "dataset_versions": pinned,
        "views": views,
    })
    write_atomic(store.dir(run_id) / "recipe.json", json_bytes(recipe.model_dump(mode="json")))
    return run_id


def load_run_recipe(home: Path, run_id: str) -> Recipe:
    """The recipe a run was prepared with (sources pinned); NotFound for an unknown run."""
    store = RunStore(home)
    store.get(run_id)
    path = store.dir(run_id) / "recipe.json"
    return parse_recipe(json.loads(path.read_text()), origin=f"run {run_id}")


def execute_run(
    run_id: str,
    home: Path,
    client: Any,
    *,
    on_tick: Callable[[], None] | None = None,
    job_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train run ``run_id`` on the cluster behind ``client``; returns the final run record."""
    from surgflow.training.job import run_rank

    store = RunStore(home)
    recipe = load_run_recipe(home, run_id)
    res = recipe.resources
    threads = res.threads_per_rank or max(1, (os.cpu_count() or 1) // res.world_size)
    job = {"run_dir": str(store.dir(run_id)), "home": str(home), "gpu": res.gpus_per_rank > 0,
           "rendezvous_timeout_s": res.rendezvous_timeout_s, "threads": threads,
           **(job_extra or {})}
    attempts: list[dict[str, Any]] = list(store.get(run_id).get("attempts", []))
    base = len(attempts)

    def record_attempt(a: Attempt) -> None:
        row = a.as_dict() | {"attempt": base + a.number}
        if len(attempts) >= base + a.number:
            attempts[base + a.number - 1] = row
        else:
            attempts.append(row)
        store.update(run_id, status="running", attempts=attempts)

    started = time.time()
    try:
        out = launch(client, run_rank, job, world_size=res.world_size,
                     gpus_per_rank=res.gpus_per_rank, max_attempts=res.max_attempts,
                     on_tick=on_tick, on_attempt=record_attempt)
    except BadInput:
        store.update(run_id, status="failed", finished_at=now_iso())
        raise
    except Exception as e:
        store.update(run_id, status="failed", finished_at=now_iso(),
                     error=f"{type(e).__name__}: {e}")
        raise
    main = next(r for r in out.results if r["rank"] == 0)
    result = {
        "model_version": main["model_version"],
        "stages": main["stages"],
        "ranks": [{k: r[k] for k in ("rank", "host", "pid", "model_version")}
                  for r in out.results],
        "seconds": time.time() - started,
    }
    versions = {r["model_version"] for r in out.results}
    if len(versions) != 1:
        store.update(run_id, status="failed", finished_at=now_iso(), error="ranks diverged")
        raise SurgflowError(f"run {run_id}: ranks ended with different weights: {sorted(versions)}")
    return store.update(run_id, status="succeeded", finished_at=now_iso(), result=result)
