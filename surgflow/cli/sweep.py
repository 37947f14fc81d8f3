"""`surgflow sweep RECIPE` (also spelt `sweep run RECIPE`) and `surgflow sweep ui [RECIPE]`:
hyper-parameter sweeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from surgflow.cli.common import JsonOption, emit, handle_errors, prefect_api, stdout_console
from surgflow.config import get_settings
from surgflow.errors import BadInput


class _RecipeFirst(TyperGroup):
    """`sweep RECIPE ...` means `sweep run RECIPE ...`: an argument that names no subcommand
    (and is not an option) is the recipe of `run`."""

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_RecipeFirst, no_args_is_help=True,
                  help="Hyper-parameter sweeps of a recipe (Optuna) on the Dask cluster: "
                       "`surgflow sweep RECIPE [--trials N]`, `surgflow sweep ui`.")


def _load(recipe: Path) -> Any:
    """The recipe, with its gate checked; BadInput naming it when it has no sweep section."""
    from surgflow.evaluation.thresholds import parse_gate
    from surgflow.training.recipe import load_recipe

    loaded = load_recipe(recipe)
    parse_gate(loaded.gate, f"recipe {recipe}")
    if loaded.sweep is None:
        raise BadInput(f"recipe {recipe}: has no sweep section to run; add one (sweep: "
                       "{trials, metric, space: {optim.lr: {low, high, log: true}}})")
    return loaded


@app.command("run")
@handle_errors
def run(
    recipe: Path = typer.Argument(..., help="Recipe file (YAML) with a sweep section.",
                                  dir_okay=False),
    trials: int = typer.Option(None, "--trials", min=1,
                               help="Finished trials the study should hold (default: the "
                                    "recipe's sweep.trials); a rerun runs only what is missing."),
    concurrency: int = typer.Option(None, "--concurrency", min=1,
                                    help="Trials trained at once (default: the slots of the "
                                         "Prefect 'gpu' concurrency limit, else 1)."),
    json_: bool = JsonOption,
):
    """Search a recipe's sweep space; export, register and gate the best trial's chain.

    Each trial is a training run on the Dask cluster under a Prefect flow, and poor trials are
    pruned early. Resumes the recipe's study when it exists."""
    _load(recipe)  # a bad recipe fails here, before a server or a cluster starts
    with prefect_api():
        from surgflow_flows.sweep import sweep_flow

        emit(sweep_flow(str(recipe), trials, concurrency), json_, _render)


@app.command("ui")
@handle_errors
def ui(
    recipe: Path = typer.Argument(None, help="Open this recipe's study (default: every study).",
                                  dir_okay=False),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port on 127.0.0.1."),
    json_: bool = JsonOption,
):
    """Serve optuna-dashboard on the sweeps' studies (loopback); Ctrl-C stops it."""
    from surgflow.sweeps.dashboard import serve

    study = _load(recipe).name if recipe is not None else None
    settings = get_settings()

    def ready(url: str) -> None:
        emit({"url": url, "study": study}, json_,
             lambda d: stdout_console.print(f"optuna-dashboard: {d['url']}  (Ctrl-C stops it)",
                                            soft_wrap=True))

    serve(settings.sweep_storage_url(), port, study=study, on_ready=ready)


def _render(s: dict[str, Any]) -> None:
    from rich.table import Table

    c = stdout_console
    table = Table("trial", "state", s["metric"], "params", "run")
    for t in s["trials"]:
        mark = " (recipe)" if t["baseline"] else ""
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in t["params"].items())
        table.add_row(f"{t['number']}{mark}", t["state"], value, params, t["run_id"] or "")
    c.print(table)
    best, base = s["best"], s["baseline"]
    if best is not None:
        c.print(f"[bold]best[/bold] trial {best['number']}: {s['metric']} {best['value']:.4f}"
                + (f" vs the recipe's {base['value']:.4f}" if base and base["value"] is not None
                   else "")
                + (f"; {best['model']}: {best['verdict']}" if best.get("model") else ""),
                soft_wrap=True)
    c.print(f"study {s['study']} in {s['storage']}; ran {len(s['ran'])} trials now",
            soft_wrap=True)
