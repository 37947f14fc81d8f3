"""The recipes shipped with surgflow: the YAML files beside this module.

They are package data, so an installed surgflow (a wheel, not only a checkout) finds them; the
repository's top-level ``recipes/`` is a link to this folder, where users look for them. Recipe
fields: :mod:`surgflow.training.recipe` and ``docs/architecture.md``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from surgflow.errors import BadInput


def recipes_dir() -> Path:
    """The folder holding the shipped recipes."""
    return Path(str(files(__name__)))


def shipped() -> list[Path]:
    """Every shipped recipe file, by name."""
    return sorted(recipes_dir().glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The shipped recipe ``name`` (``"tiny"`` or ``"tiny.yaml"``); BadInput naming the known
    ones if there is none."""
    path = recipes_dir() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        known = ", ".join(p.stem for p in shipped())
        raise BadInput(f"no shipped recipe {name!r} in {recipes_dir()}; shipped: {known}")
    return path
