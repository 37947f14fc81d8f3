"""A training run from recipe to record: prepare the run, train on the cluster, record the result.

:func:`prepare_run` resolves the recipe's data and writes the run directory (or reopens one to
resume it by hand); :func:`execute_run` launches the DDP group on the Dask cluster and records
attempts, status and result in ``run.json``; a sweep's trial that was stopped early ends
``pruned``. The Prefect flow and the CLI are thin over these two calls; nothing here imports
Prefect.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from surgflow.errors import BadInput, SurgflowError
from surgflow.storage import json_bytes, write_atomic
from surgflow.training import data
from surgflow.training.launcher import Attempt, WorkerLease, launch
from surgflow.training.recipe import Recipe, parse_recipe
from surgflow.training.runs import RunStore, now_iso

log = logging.getLogger(__name__)


def _mlflow(home: Path) -> Any:
    from surgflow import tracking
    from surgflow.config import get_settings

    return tracking.client(get_settings(home=home))


def prepare_run(recipe: Recipe, home: Path, *, resume: str | None = None,
                recipe_path: str | None = None,
                resolve_production: Callable[[str], Path] | None = None,
                mlflow_tags: Mapping[str, str] | None = None) -> str:
    """A run ready to launch: new, or ``resume``'s unfinished run (resumed by hand).

    A new run pins the recipe's sources to the dataset versions that are latest now and
    resolves their views once, so a run with no training or validation clips fails here, before
    any worker is used. It is also an MLflow run (its id is ``mlflow_run_id`` in run.json).
    A recipe that reuses a stage of the production chain (``{from: production}``) needs
    ``resolve_production(procedure)``: the local directory of that procedure's production
    chain bundle, kept in run.json as ``reuse`` (stage → directory). ``mlflow_tags`` are added
    to the new MLflow run (a sweep's trial names its parent run with ``mlflow.parentRunId``).
    """
    store = RunStore(home)
    if resume is not None:
        record = store.get(resume)
        if record["status"] == "succeeded":
            raise BadInput(f"run {resume!r} already finished; start a new run instead")
        store.update(resume, status="resuming")
        if record.get("mlflow_run_id"):
            from surgflow.training import mlflow_run

            mlflow_run.reopen_run(_mlflow(home), record["mlflow_run_id"])
        return resume
    reuse = _reused_stages(recipe, resolve_production)
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
        "reuse": reuse,
    })
    run_dir = store.dir(run_id)
    write_atomic(run_dir / "recipe.json", json_bytes(recipe.model_dump(mode="json")))
    from surgflow.training import checkpoints, mlflow_run

    mlflow_id = mlflow_run.open_run(
        _mlflow(home), procedure=recipe.procedure, run_id=run_id,
        recipe=recipe.model_dump(mode="json"),
        recipe_file=Path(recipe_path) if recipe_path else None,
        run_dir=run_dir, dataset_versions=pinned, code_version=checkpoints.code_version(),
        extra_tags=mlflow_tags,
    )
    store.update(run_id, mlflow_run_id=mlflow_id)
    return run_id


def _reused_stages(recipe: Recipe,
                   resolve_production: Callable[[str], Path] | None) -> dict[str, str]:
    """Stage name → bundle directory of each stage the recipe takes from production."""
    wanted = recipe.reused_stages
    if not wanted:
        return {}
    if resolve_production is None:
        raise BadInput(
            f"recipe {recipe.name!r} reuses the {' and '.join(wanted)} stage of the production "
            f"chain of {recipe.procedure!r}, but no model registry was given to find it"
        )
    bundle = Path(resolve_production(recipe.procedure))
    return {stage: str(bundle) for stage in wanted}


def preview(recipe: Recipe, home: Path) -> dict[str, Any]:
    """What ``recipe`` would train on now, without starting anything: the dataset versions its
    sources pin to and, per split, videos and clips (in all and per source), and the label
    shares the balancing targets against those it achieves (training clips are balanced;
    validation clips are not)."""
    import numpy as np

    pinned = data.pin_sources(recipe.data.sources, home)
    out: dict[str, Any] = {
        "recipe": recipe.name, "procedure": recipe.procedure, "dataset_versions": pinned,
        "chain": recipe.is_chain, "reused_from_production": recipe.reused_stages,
        "clip": recipe.clip.model_dump(mode="json"), "balance": recipe.data.balance,
        "balance_by": recipe.data.balance_by, "splits": {},
    }
    for split in data.SPLITS:
        view = data.resolve(recipe, pinned, split, home)
        per_video = np.bincount(view.video, minlength=len(view.videos))
        sources: dict[str, dict[str, int]] = {}
        for v, n in zip(view.videos, per_video.tolist(), strict=True):
            row = sources.setdefault(v.source, {"videos": 0, "clips": 0})
            row["videos"] += 1
            row["clips"] += n
        report = view.report()
        groups = report["distribution"]
        by_label = recipe.data.balance_by == "label"
        labels = {c: {"clips": int(np.sum(view.label == i)),
                      "natural": report["labels"][c]["natural"],
                      "target": groups[c]["target"] if by_label and c in groups else None,
                      "achieved": report["labels"][c]["achieved"]}
                  for i, c in enumerate(view.classes) if c in report["labels"]}
        out["splits"][split] = {"videos": len(view.videos), "clips": len(view),
                                "sources": dict(sorted(sources.items())), "labels": labels}
        if not by_label:  # the shares of what is balanced (sources or videos)
            out["splits"][split]["groups"] = groups
    return out


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
    lease: WorkerLease | None = None,
) -> dict[str, Any]:
    """Train run ``run_id`` on the cluster behind ``client``; returns the final run record.

    ``job_extra`` joins the job every rank receives (``"trial"``: the run is a sweep's trial,
    see :mod:`surgflow.training.pruning`); ``lease`` hands out the workers when other groups
    share the cluster. A pruned trial ends with status ``pruned`` and ``result["pruned"]``."""
    from surgflow.training.job import run_rank

    store = RunStore(home)
    recipe = load_run_recipe(home, run_id)
    res = recipe.resources
    threads = res.threads_per_rank or max(1, (os.cpu_count() or 1) // res.world_size)
    record = store.get(run_id)
    mlflow_id = record.get("mlflow_run_id")
    job = {"run_dir": str(store.dir(run_id)), "home": str(home), "gpu": res.gpus_per_rank > 0,
           "rendezvous_timeout_s": res.rendezvous_timeout_s, "threads": threads,
           "reuse": record.get("reuse") or {}, **(job_extra or {})}
    if mlflow_id:
        from surgflow import tracking
        from surgflow.config import get_settings

        job |= {"mlflow_run_id": mlflow_id,
                "mlflow_tracking_uri": tracking.tracking_uri(get_settings(home=home))}
    attempts: list[dict[str, Any]] = list(record.get("attempts", []))
    base = len(attempts)

    def record_attempt(a: Attempt) -> None:
        row = a.as_dict() | {"attempt": base + a.number}
        if len(attempts) >= base + a.number:
            attempts[base + a.number - 1] = row
        else:
            attempts.append(row)
        store.update(run_id, status="running", attempts=attempts)

    def close(failed: bool) -> None:
        if mlflow_id:
            from surgflow.training import mlflow_run

            mlflow_run.close_run(_mlflow(home), mlflow_id, failed=failed)

    started = time.time()
    try:
        out = launch(client, run_rank, job, world_size=res.world_size,
                     gpus_per_rank=res.gpus_per_rank, max_attempts=res.max_attempts,
                     on_tick=on_tick, on_attempt=record_attempt, lease=lease)
    except BadInput:
        store.update(run_id, status="failed", finished_at=now_iso())
        close(failed=True)
        raise
    except BaseException as e:
        store.update(run_id, status="failed", finished_at=now_iso(),
                     error=f"{type(e).__name__}: {e}")
        close(failed=True)
        raise
    main = next(r for r in out.results if r["rank"] == 0)
    result = {
        "model_version": main["model_version"],
        "stages": main["stages"],
        "ranks": [{k: r[k] for k in ("rank", "host", "pid", "model_version")}
                  for r in out.results],
        "seconds": time.time() - started,
    } | ({"pruned": main["pruned"]} if "pruned" in main else {})
    versions = {r["model_version"] for r in out.results}
    if len(versions) != 1:
        store.update(run_id, status="failed", finished_at=now_iso(), error="ranks diverged")
        close(failed=True)
        raise SurgflowError(f"run {run_id}: ranks ended with different weights: {sorted(versions)}")
    status = "pruned" if "pruned" in result else "succeeded"
    record = store.update(run_id, status=status, finished_at=now_iso(), result=result)
    close(failed=False)
    return record
