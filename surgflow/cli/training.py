"""`surgflow train RECIPE` and `surgflow runs list|show|plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors, prefect_api, stdout_console
from surgflow.config import get_settings
from surgflow.errors import BadInput

runs_app = typer.Typer(help="Training runs: records, metrics, utilisation.",
                       no_args_is_help=True)


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    result = record.get("result") or {}
    stages = {
        name: {k: s.get(k) for k in ("version", "epochs", "resumed_from_epoch", "final")}
        for name, s in (result.get("stages") or {}).items() if "version" in s
    }
    release = record.get("release") or {}
    return {"run_id": record["run_id"], "status": record["status"],
            "recipe": record.get("recipe_name"), "dataset_versions": record.get("dataset_versions"),
            "model_version": result.get("model_version"), "attempts": len(record["attempts"]),
            "seconds": result.get("seconds"), "stages": stages,
            "model": release.get("model"), "verdict": release.get("verdict")}


def _render_preview(p: dict[str, Any]) -> None:
    from rich.table import Table

    c = stdout_console
    reused = ", ".join(p["reused_from_production"]) or "none"
    c.print(f"[bold]recipe[/bold] {p['recipe']} ({p['procedure']}): "
            f"{'chain' if p['chain'] else 'single model'}, stages from production: {reused}")
    c.print(f"[bold]dataset versions[/bold] {', '.join(p['dataset_versions'])}; "
            f"balance {p['balance']} by {p['balance_by']}")
    for split, s in p["splits"].items():
        sources = ", ".join(f"{k} {v['videos']} videos / {v['clips']} clips"
                            for k, v in s["sources"].items())
        c.print(f"[bold]{split}[/bold]: {s['videos']} videos, {s['clips']} clips ({sources})")
        table = Table("label", "clips", "natural", "target", "achieved")
        for label, row in s["labels"].items():
            target = "" if row["target"] is None else f"{row['target']:.1%}"
            table.add_row(label, str(row["clips"]), f"{row['natural']:.1%}", target,
                          f"{row['achieved']:.1%}")
        c.print(table)


@handle_errors
def train(
    recipe: Path = typer.Argument(None, help="Recipe file (YAML).", dir_okay=False),
    resume: str = typer.Option(None, "--resume", help="Resume this unfinished run."),
    dry_run: bool = typer.Option(
        False, "--dry-run",
        help="Validate the recipe and show the data it would train on; start nothing."),
    json_: bool = JsonOption,
):
    """Train a recipe on the Dask cluster under a Prefect flow, then export, register and
    gate the chain; prints the run record with the candidate and its verdict."""
    if recipe is None and resume is None:
        raise BadInput("give a RECIPE file, or --resume RUN")
    if dry_run and recipe is None:
        raise BadInput("--dry-run previews a RECIPE file; give one")
    from surgflow.evaluation.thresholds import parse_gate
    from surgflow.training.recipe import load_recipe

    if recipe is not None:
        loaded = load_recipe(recipe)  # a bad recipe fails here, before anything starts
        parse_gate(loaded.gate, f"recipe {recipe}")
        if dry_run:
            from surgflow.training.pipeline import preview

            emit(preview(loaded, get_settings().home), json_, _render_preview)
            return
    with prefect_api():
        from surgflow_flows.pipeline import train_and_release
        from surgflow_flows.training import TrainingParams

        params = TrainingParams(recipe_path=str(recipe) if recipe else None,
                                resume_run=resume)
        emit(_summary(train_and_release(params)), json_)


@runs_app.command("list")
@handle_errors
def list_runs(json_: bool = JsonOption):
    """Every run, oldest first."""
    from surgflow.training.runs import RunStore

    emit(RunStore(get_settings().home).list(), json_)


@runs_app.command("show")
@handle_errors
def show(run: str = typer.Argument(..., help="Run id."), json_: bool = JsonOption):
    """A run's record: parameters, attempts, per-epoch metrics, utilisation summary."""
    from surgflow.training.runs import RunStore

    emit(RunStore(get_settings().home).show(run), json_)


@runs_app.command("plot")
@handle_errors
def plot(
    run: str = typer.Argument(..., help="Run id."),
    out: Path = typer.Option(None, "--out", help="PNG path (default: in the run directory)."),
    json_: bool = JsonOption,
):
    """A PNG with the run's metrics and every rank's utilisation on one time axis."""
    from surgflow.training.plot import plot_run

    emit({"run_id": run, "png": str(plot_run(get_settings().home, run, out))}, json_)
