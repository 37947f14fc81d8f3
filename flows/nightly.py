"""The nightly build: the recipes it owns, trained and released concurrently.

:func:`nightly_build` gathers one :func:`~surgflow_flows.pipeline.recipe_pipeline` subflow per
recipe file whose periodic run it owns (:func:`surgflow.registry.periodic.periodic_owner`: a
recipe with its own cron runs from its own deployment instead, so it never trains twice a
night); the ``gpu`` global concurrency limit bounds how many train at once. Each pipeline
skips a recipe that is unchanged since its latest registered model, unless ``force``. A recipe
that fails (bad file, no data, a crashed group) is reported in the summary and does not stop
the others. Candidates of one procedure compete for one production slot: after every pipeline
ends, :func:`surgflow.registry.release.pick_winner` names the candidate each model promotes.
The build ends with a summary artifact: recipe, dataset versions, candidate, verdict, promoted
or not, and why a recipe was skipped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_table_artifact

from surgflow.registry.periodic import NIGHTLY, periodic_owner
from surgflow.registry.release import field_score, pick_winner
from surgflow.training.recipe import load_recipe
from surgflow_flows.pipeline import recipe_pipeline, row

COLUMNS = ("recipe", "dataset_versions", "model", "verdict", "field_macro_f1", "promoted",
           "skipped", "error")


def recipe_files(recipes_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(recipes_dir).iterdir() if p.suffix in (".yaml", ".yml"))


@task(name="promote-best")
def promote_best(model: str, recipe: str) -> dict[str, Any]:
    from surgflow.registry import ModelRegistry, parse_ref

    name, version = parse_ref(model)
    return ModelRegistry().promote(name, version, to="production", by="surgflow-nightly",
                                   reason=f"nightly: best approved candidate ({recipe})")


async def _isolated(path: Path, force: bool) -> dict[str, Any]:
    try:
        recipe = load_recipe(path)
        owner = periodic_owner(recipe)
        if owner != NIGHTLY:
            return row(str(path), recipe=recipe.name,
                       skipped=f"periodic run owned by deployment {owner} "
                               f"(cron {recipe.triggers.cron})")
        return await recipe_pipeline(str(path), promote=False, cause="nightly",
                                     skip_unchanged=not force)
    except Exception as e:  # one recipe's failure is a row of the summary, not the build's
        return row(str(path), error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")


@flow(name="surgflow-nightly", validate_parameters=True)
async def nightly_build(recipes_dir: str = "recipes", promote: bool = True,
                        force: bool = False) -> list[dict]:
    """Train and release every recipe under ``recipes_dir`` that has no cron of its own
    (``force``: even those unchanged since their latest model); returns the summary rows."""
    log = get_run_logger()
    paths = recipe_files(recipes_dir)
    log.info("nightly build of %d recipes under %s", len(paths), recipes_dir)
    rows = list(await asyncio.gather(*[_isolated(p, force) for p in paths]))
    winners = pick_winner(rows) if promote else {}
    for r in rows:
        r["field_macro_f1"] = field_score(r["seal"]) if r["model"] else None
    for winner in winners.values():
        await asyncio.to_thread(promote_best, winner["model"], winner["recipe"])
        winner["promoted"] = True
    for r in rows:
        r.pop("seal", None)
    await acreate_table_artifact(
        [{k: _cell(r.get(k)) for k in COLUMNS} for r in rows],
        key="nightly-build", description="nightly build: one row per recipe")
    return rows


def _cell(v: Any) -> Any:
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return round(v, 3) if isinstance(v, float) else v
