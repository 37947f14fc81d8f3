"""`surgflow up` / `surgflow down`: the local stack (see :mod:`surgflow.cli.local.stack`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors, stdout_console


def _default_recipes() -> Path:
    from surgflow.recipes import recipes_dir

    return recipes_dir()


@handle_errors
def up(
    recipes: Path = typer.Option(None, "--recipes", help="Recipes directory (default: the "
                                 "recipes shipped with surgflow).", file_okay=False),
    workers: int = typer.Option(2, "--workers", min=1, help="Local Dask worker processes."),
    port: int = typer.Option(None, "--port", help="Port of the inference service."),
    json_: bool = JsonOption,
) -> None:
    """Start the local stack in the background and print where each part answers."""
    from surgflow.cli.local.prefect_server import ensure_server
    from surgflow.config import get_settings

    settings = get_settings()
    ensure_server(settings.home)  # before Prefect is imported anywhere in this process
    from surgflow.cli.local.stack import up as start

    emit(start(recipes or _default_recipes(), workers=workers, settings=settings,
               serve_port=port), json_, _render)


@handle_errors
def down(json_: bool = JsonOption) -> None:
    """Stop exactly what `surgflow up` started, and a Prefect server `surgflow train` left."""
    from surgflow.cli.local.stack import down as stop

    emit(stop(), json_, lambda r: stdout_console.print(
        f"stopped: {', '.join(r['stopped']) or 'nothing was running'}", soft_wrap=True))


def _render(r: dict[str, Any]) -> None:
    c = stdout_console
    for label, key in (("Prefect UI", "prefect_ui"), ("Dask dashboard", "dask_dashboard"),
                       ("MLflow UI", "mlflow_ui"), ("inference service", "inference_service"),
                       ("Label Studio", "label_studio"), ("  login", "label_studio_login"),
                       ("annotation bridge", "annotation_bridge"),
                       ("Kafka bootstrap", "kafka_bootstrap"), ("logs", "logs")):
        if r.get(key):
            c.print(f"[bold]{label:18}[/bold] {r[key]}", soft_wrap=True)
    c.print("stop everything with `surgflow down`")
