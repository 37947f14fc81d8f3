"""Data triggers: a new dataset version → which recipes retrain (SPEC §9).

:func:`check_triggers` runs on every ``surgflow.dataset.version.created`` event (its
deployment's trigger passes the payload's dataset and version). For each recipe whose view mixes
that dataset it compares the view's footprint with what the recipe last trained on or fired for
(:mod:`surgflow.training.triggers`, which decides and records each crossing once) and emits the
derived event ``surgflow.recipe.retrain`` on resource ``surgflow.recipe.<name>``: Prefect
trigger filters see resource labels, not payloads, so each recipe's deployment triggers on its
own resource.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from surgflow.config import get_settings

RETRAIN_EVENT = "surgflow.recipe.retrain"


def recipe_resource(name: str) -> str:
    return f"surgflow.recipe.{name}"


def announce_retrain(recipe_name: str, recipe_path: str, firing: dict[str, Any]) -> None:
    """Emit ``surgflow.recipe.retrain`` for ``firing`` on the recipe's own resource."""
    emit_event(event=RETRAIN_EVENT,
               resource={"prefect.resource.id": recipe_resource(recipe_name),
                         "prefect.resource.name": recipe_name},
               payload=firing | {"recipe_path": str(Path(recipe_path).resolve())})


@task(name="evaluate-recipe-triggers")
def evaluate(recipe_path: str, dataset: str, version: int) -> dict[str, Any] | None:
    """The firing of ``recipe_path`` for ``dataset@version``, or None if nothing crossed."""
    from surgflow.training.recipe import load_recipe
    from surgflow.training.triggers import evaluate_version

    recipe = load_recipe(recipe_path)
    firing = evaluate_version(recipe, get_settings().home, dataset, version)
    if firing is not None:
        announce_retrain(recipe.name, recipe_path, firing)
    return firing


@flow(name="surgflow-triggers", validate_parameters=True)
def check_triggers(dataset: str, version: int, recipes_dir: str = "recipes") -> list[dict]:
    """Evaluate every recipe's data triggers against ``dataset@version``; returns the firings."""
    from surgflow_flows.nightly import recipe_files

    log = get_run_logger()
    fired = [f for p in recipe_files(recipes_dir)
             if (f := evaluate(str(p), dataset, version)) is not None]
    for f in fired:
        log.info("%s retrains: %s", f["recipe"], f["why"])
    return fired
