"""Release policy: what a finished training run registers, and which candidate wins.

:func:`register_run` turns a finished run into the next candidate version of its procedure's
model, with the facts a version keeps (the recipe it was trained from, sources pinned; its
dataset versions; the code version; every stage's final validation metrics).
:func:`pick_winner` decides, among candidates of several recipes, which one each model name
promotes: the approved one with the best field macro-F1, read from its seal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from surgflow.registry.model import ModelVersion, parse_ref
from surgflow.registry.store import ModelRegistry

FIELD_METRIC = "macro_f1"
# The seal checks whose ``value`` is the candidate's whole-suite score of a metric, in the
# order surgflow.evaluation.checks writes them; per-source (`.source.<s>`) and bootstrap
# checks hold other quantities and must never be read as it.
SCORE_CHECKS = ("min", "chain_vs_encoder", "regression", "relative_regression")

Candidate = TypeVar("Candidate", bound=Mapping[str, Any])


def run_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """``<stage>.val.<metric>`` → value of every stage's final validation metrics in a run
    record (``run.json``); what a registered version keeps as its metrics."""
    stages = (record.get("result") or {}).get("stages") or {}
    return {f"{name}.val.{k}": v
            for name, stage in stages.items()
            for k, v in ((stage.get("final") or {}).get("val") or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def register_run(run_id: str, bundle_dir: Path, *, home: Path | None = None,
                 registry: ModelRegistry | None = None) -> ModelVersion:
    """Register ``bundle_dir``, the chain bundle exported from finished training run
    ``run_id``, as the next candidate version of ``<procedure>-phase``.

    Registering the same run and bundle again returns the version it already made."""
    from surgflow.config import get_settings
    from surgflow.training.checkpoints import code_version
    from surgflow.training.pipeline import load_run_recipe
    from surgflow.training.runs import RunStore

    home = Path(home) if home is not None else get_settings().home
    registry = registry or ModelRegistry()
    record = RunStore(home).get(run_id)
    recipe = load_run_recipe(home, run_id)
    return registry.register(
        procedure=recipe.procedure, bundle_dir=Path(bundle_dir),
        run_id=record["mlflow_run_id"], recipe_name=recipe.name,
        recipe=recipe.model_dump(mode="json"), recipe_path=record.get("recipe_path"),
        dataset_versions=list(record.get("dataset_versions") or []),
        code_version=code_version(), metrics=run_metrics(record),
    )


def field_score(seal: Mapping[str, Any] | None, metric: str = FIELD_METRIC) -> float | None:
    """The candidate's ``metric`` on the field suite as its seal records it (None: the gate
    checked nothing that holds it)."""
    names = {f"{metric}.{kind}" for kind in SCORE_CHECKS}
    for check in (seal or {}).get("checks", []):
        value = check.get("value")
        if check.get("name") in names and isinstance(value, (int, float)):
            return float(value)
    return None


def pick_winner(candidates: Iterable[Candidate],
                metric: str = FIELD_METRIC) -> dict[str, Candidate]:
    """Model name → the candidate to promote: of those whose seal approved them, the one with
    the best field ``metric``; one the seal has no score for ranks below every scored one, and
    a tie goes to the earlier candidate.

    Each candidate is a mapping with ``model`` (``NAME@VERSION``) and ``seal``; others (a
    failed or skipped recipe: ``model`` None) are ignored."""
    best: dict[str, tuple[tuple[bool, float], Candidate]] = {}
    for candidate in candidates:
        seal = candidate.get("seal") or {}
        if not candidate.get("model") or seal.get("verdict") != "approved":
            continue
        name, _ = parse_ref(candidate["model"])
        score = field_score(seal, metric)
        key = (score is not None, score if score is not None else 0.0)
        if name not in best or key > best[name][0]:
            best[name] = (key, candidate)
    return {name: candidate for name, (_, candidate) in best.items()}
