"""A recipe's periodic run: who owns it, and when it can be skipped.

Ownership: a recipe that declares ``triggers.cron`` runs periodically on that cron, from its
own deployment ``recipe-<name>``; the nightly build runs every other recipe. Each recipe has
one owner, so no recipe trains twice on one schedule.

Skipping: a periodic run retrains a recipe only if something it trains from changed since its
latest registered model: the dataset versions its sources resolve to now, or the recipe itself
(:func:`recipe_digest`). :func:`unchanged_since` decides on plain data; :func:`skip_reason`
gathers that data from the dataset store and the registry. Data-driven retrains (growth, a new
source) and runs asked for by hand never ask.

A drift retrain (the inference stream moved away from what production was trained on) asks
:func:`views_unchanged_reason`: drift alone teaches a model nothing, so it trains only when the
recipe's training and validation views now differ from those of its latest registered model
(labels arrived since, of any source); the dataset versions may have moved on with nothing but
model outputs the recipe does not train from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgflow.errors import BadInput, NotFound
from surgflow.registry.model import model_name
from surgflow.registry.store import ModelRegistry
from surgflow.training.recipe import Recipe, parse_recipe

NIGHTLY = "nightly"


def recipe_deployment(recipe_name: str) -> str:
    """The name of the deployment that runs recipe ``recipe_name``'s pipeline."""
    return f"recipe-{recipe_name}"


def periodic_owner(recipe: Recipe) -> str:
    """The deployment that runs ``recipe`` periodically: its own when it declares a cron,
    else the nightly build."""
    return recipe_deployment(recipe.name) if recipe.triggers.cron else NIGHTLY


def recipe_digest(recipe: Mapping[str, Any]) -> str:
    """sha256 of a recipe (as plain data) without what cannot change the model it trains or
    its verdict: its description and triggers, and its sources, which count through the dataset
    versions they resolve to (``cholecystectomy`` and ``cholecystectomy@3`` train alike while
    3 is the latest)."""
    content = {k: v for k, v in recipe.items() if k not in ("description", "triggers")}
    content["data"] = {k: v for k, v in dict(recipe.get("data") or {}).items() if k != "sources"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Trained:
    """What a registered version was trained from."""

    ref: str
    dataset_versions: tuple[str, ...]
    recipe_digest: str | None  # None: its recipe could not be read


def unchanged_since(dataset_versions: Sequence[str], digest: str,
                    latest: Trained | None) -> str | None:
    """Why a periodic run of a recipe that resolves to ``dataset_versions`` and hashes to
    ``digest`` can be skipped, given ``latest``, its latest registered version (None: it has
    none); None when it must train."""
    if latest is None or latest.recipe_digest != digest:
        return None
    if tuple(dataset_versions) != latest.dataset_versions:
        return None
    return (f"unchanged since {latest.ref}: same recipe, dataset versions "
            f"{', '.join(dataset_versions) or '(none)'}")


def latest_trained(registry: ModelRegistry, recipe: Recipe) -> Trained | None:
    """The latest version registered from ``recipe`` (by name) under its procedure's model,
    with the dataset versions and recipe it was trained from; None if there is none."""
    name = model_name(recipe.procedure)
    try:
        versions = [v for v in registry.list(name) if v.recipe == recipe.name]
    except NotFound:
        return None  # the procedure has no model yet
    if not versions:
        return None
    latest = max(versions, key=lambda v: v.version)
    return Trained(latest.ref, tuple(latest.dataset_versions),
                   _stored_digest(registry, latest.name, latest.version))


def _stored_digest(registry: ModelRegistry, name: str, version: int) -> str | None:
    """The digest of the recipe ``name@version`` was trained from, read back through today's
    recipe model so that a field added since (with its default) does not count as a change;
    None when its artifacts no longer match the registry or it no longer reads as a recipe."""
    try:
        stored = parse_recipe(registry.recipe(name, version), origin=f"{name}@{version}")
    except BadInput:
        return None
    return recipe_digest(stored.model_dump(mode="json"))


def skip_reason(recipe: Recipe, home: Path,
                registry: ModelRegistry | None = None) -> tuple[list[str], str | None]:
    """The dataset versions ``recipe``'s sources resolve to now, and why its periodic run can
    be skipped (None: it must train)."""
    from surgflow.training.data import pin_sources

    pinned = pin_sources(recipe.data.sources, home)
    latest = latest_trained(registry or ModelRegistry(), recipe)
    return pinned, unchanged_since(pinned, recipe_digest(recipe.model_dump(mode="json")), latest)


def views_unchanged_reason(recipe: Recipe, home: Path,
                           registry: ModelRegistry | None = None) -> str | None:
    """Why a drift retrain of ``recipe`` can be skipped: the same recipe as its latest
    registered model, whose train and val views over the dataset versions latest now equal
    those over the versions it was trained from (None: it must train)."""
    from surgflow.training.data import SPLITS, pin_sources, resolve

    latest = latest_trained(registry or ModelRegistry(), recipe)
    if latest is None or latest.recipe_digest != recipe_digest(recipe.model_dump(mode="json")):
        return None
    pinned = pin_sources(recipe.data.sources, home)
    then = list(latest.dataset_versions)
    if pinned != then and any(resolve(recipe, pinned, split, home).digest()
                              != resolve(recipe, then, split, home).digest()
                              for split in SPLITS):
        return None
    return (f"nothing new to train from since {latest.ref}: its training and validation "
            f"views over {', '.join(pinned)} equal those over {', '.join(then)}")
