"""`surgflow deployments serve|deploy|list` and `surgflow nightly`."""

from __future__ import annotations

from pathlib import Path

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors

app = typer.Typer(help="Prefect deployments: nightly build, data triggers, one per recipe.",
                  no_args_is_help=True)

RecipesOption = typer.Option(None, "--recipes", file_okay=False,
                             help="Recipes directory (default: the recipes shipped with surgflow).")


def _recipes(path: Path | None) -> Path:
    from surgflow.recipes import recipes_dir

    return path or recipes_dir()


def _server() -> None:
    from surgflow.cli.local.prefect_server import ensure_server
    from surgflow.config import get_settings

    ensure_server(get_settings().home)  # before Prefect is imported


@app.command("list")
@handle_errors
def list_(recipes: Path = RecipesOption, json_: bool = JsonOption) -> None:
    """The deployments, their schedules and triggers, and the recipes whose periodic runs each
    owns (nothing is started)."""
    from surgflow_flows.deployments import declarations

    emit([{"name": d["name"], "flow": d["flow"].name, "cron": d["cron"],
           "interval_s": d.get("interval"),
           "triggers": [[*sorted(t.expect), t.match.get("prefect.resource.id")]
                        for t in d["triggers"]],
           "periodic_runs_of": d["periodic_runs_of"], "parameters": d["parameters"]}
          for d in declarations(_recipes(recipes))], json_)


@app.command("serve")
@handle_errors
def serve(recipes: Path = RecipesOption) -> None:
    """Serve every deployment from this process until interrupted."""
    _server()
    from surgflow_flows.deployments import serve as run

    run(_recipes(recipes))


@app.command("deploy")
@handle_errors
def deploy(
    work_pool: str = typer.Option(..., "--work-pool", help="Work pool to run them in."),
    image: str = typer.Option(None, "--image", help="Container image (container pools)."),
    source: str = typer.Option(None, "--source", help="Code location the workers see."),
    recipes: Path = RecipesOption,
    json_: bool = JsonOption,
) -> None:
    """Register every deployment with a work pool on PREFECT_API_URL (server or Cloud)."""
    _server()
    from surgflow_flows.deployments import deploy as run

    emit({"deployments": run(_recipes(recipes), work_pool, image=image, source=source)}, json_)


@handle_errors
def nightly(recipes: Path = RecipesOption, promote: bool = typer.Option(
        True, "--promote/--no-promote", help="Promote the best approved candidate."),
        gpus: int = typer.Option(None, "--gpu-slots", min=1,
                                 help="Set the `gpu` concurrency limit to this many slots."),
        force: bool = typer.Option(False, "--force",
                                   help="Train recipes unchanged since their latest model too."),
        json_: bool = JsonOption) -> None:
    """Run the nightly build now: every recipe without a cron of its own trained, gated and
    released concurrently; one unchanged since its latest model is skipped unless --force."""
    import asyncio

    _server()
    from surgflow_flows.nightly import nightly_build
    from surgflow_flows.pipeline import ensure_gpu_limit

    if gpus:
        ensure_gpu_limit(gpus)
    emit(asyncio.run(nightly_build(str(_recipes(recipes)), promote, force)), json_)
