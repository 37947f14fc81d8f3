"""The drift watch: the inference stream against each production version's training view.

Thin over :mod:`surgflow.drift`, one task per call: one watch pass (new inference events
observed, each source's window compared with the production version's reference), then the
drift triggers of every recipe under ``recipes_dir`` that declares one
(:func:`surgflow.training.triggers.evaluate_drift`, which fires once per crossing), each firing
announced as the same ``surgflow.recipe.retrain`` event the data triggers emit, so the
recipe's own deployment runs its pipeline; then the pass's HTML report, published as a
markdown artifact with a summary table and a link to it. Its deployment runs every minute.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from surgflow.config import get_settings
from surgflow_flows.triggers import announce_retrain

WATCH_EVERY_S = 60


@task(name="watch-inference", retries=1, retry_delay_seconds=5)
def watch_inference() -> dict[str, Any]:
    """One watch pass over the ``inference`` topic (a broker hiccup is worth one retry)."""
    from surgflow.drift.watch import watch

    return watch(get_settings()).as_json()


@task(name="evaluate-drift-triggers")
def evaluate_drift_triggers(recipe_path: str, reports: list[dict]) -> list[dict[str, Any]]:
    """The firings of ``recipe_path``'s drift trigger for ``reports``, each announced."""
    from surgflow.drift.watch import DriftReport
    from surgflow.training.recipe import load_recipe
    from surgflow.training.triggers import evaluate_drift

    recipe = load_recipe(recipe_path)
    fired = evaluate_drift(recipe, get_settings().home,
                           [DriftReport.from_json(r) for r in reports])
    for firing in fired:
        announce_retrain(recipe.name, recipe_path, firing)
    return fired


@task(name="write-drift-report")
def write_drift_report(result: dict[str, Any]) -> str:
    from surgflow.drift.report import write_report

    return str(write_report(get_settings().home, result))


@task(name="publish-drift-report")
def publish_drift_report(result: dict[str, Any], report: str) -> None:
    rows = "\n".join(
        f"| {r['procedure']} | {r['source']} | {r['model']} | {r['videos']} | "
        f"{r['max_psi']['feature'] or '–'} | "
        f"{'–' if r['max_psi']['psi'] is None else format(r['max_psi']['psi'], '.3f')} | "
        f"{'⚠️ drifted' if r['drifted'] else 'stable'} |"
        for r in result["reports"])
    table = ("| procedure | source | model | videos | most drifted | PSI | verdict |\n"
             "|---|---|---|---|---|---|---|\n" + rows) if rows else "No source observed yet."
    create_markdown_artifact(
        markdown=(f"## Drift watch\n\n{table}\n\n{result['observed']} new of "
                  f"{result['read']} inference events observed.\n\n"
                  f"Report: [{report}](file://{report})"),
        key="drift-watch", description="each source's window against its reference")


def drift_recipes(recipes_dir: str) -> list[str]:
    """The recipe files under ``recipes_dir`` that declare a drift trigger."""
    from surgflow.training.recipe import load_recipe
    from surgflow_flows.nightly import recipe_files

    return [str(p) for p in recipe_files(recipes_dir) if load_recipe(p).triggers.drift]


@flow(name="drift-watch", validate_parameters=True)
def drift_watch(recipes_dir: str = "recipes") -> dict[str, Any]:
    """One watch pass, the drift triggers of the recipes under ``recipes_dir``, the report;
    returns the pass (``reports``, counts) with the ``firings``."""
    log = get_run_logger()
    result = watch_inference()
    fired = [f for path in drift_recipes(recipes_dir)
             for f in evaluate_drift_triggers(path, result["reports"])]
    for f in fired:
        log.info("%s retrains: %s", f["recipe"], f["why"])
    publish_drift_report(result, write_drift_report(result))
    return result | {"firings": fired}
