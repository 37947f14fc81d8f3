"""`surgflow annotate sync|serve|status`: the annotators' workbench in Label Studio."""

from __future__ import annotations

from typing import Any

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors, stdout_console
from surgflow.config import get_settings

app = typer.Typer(help="Feedback tasks in Label Studio, corrections back to Kafka.",
                  no_args_is_help=True)


@app.command("sync")
@handle_errors
def sync(json_: bool = JsonOption) -> None:
    """Send open feedback tasks to Label Studio and its annotations back, once."""
    from surgflow.annotation.sync import run_sync

    emit(run_sync(get_settings()).as_json(), json_, _render_sync)


@app.command("serve")
@handle_errors
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(8010, "--port", min=1, max=65535, help="Port to bind."),
) -> None:
    """Serve people media to Label Studio and take its webhooks, until interrupted."""
    from surgflow.annotation.bridge import serve as run

    run(get_settings(), host, port)


@app.command("status")
@handle_errors
def status(json_: bool = JsonOption) -> None:
    """Where Label Studio answers, how to sign in, and the bridge (starts nothing)."""
    from surgflow.annotation.links import bridge_url
    from surgflow.annotation.server import endpoint
    from surgflow.errors import SurgflowError

    settings = get_settings()
    try:
        ep = endpoint(settings, start_embedded=False)
        found = {"running": True, "url": ep.url, "embedded": ep.embedded, "login": ep.login,
                 "password": ep.password}
    except SurgflowError:  # the embedded one, not started
        found = {"running": False, "url": None, "embedded": True, "login": None,
                 "password": None}
    emit(found | {"bridge": bridge_url(settings)}, json_, _render_status)


def _render_sync(r: dict[str, Any]) -> None:
    stdout_console.print(
        f"{r['tasks_sent']} tasks sent ({r['tasks_held']} already there, "
        f"{r['tasks_withheld']} waiting for privacy clearance), "
        f"{r['tasks_closed']} closed, {r['annotations_returned']} annotations returned "
        f"of {r['annotations_seen']}, {r['problems_reported']} problems reported back",
        soft_wrap=True)


def _render_status(r: dict[str, Any]) -> None:
    stdout_console.print(f"[bold]Label Studio[/bold] {r['url'] or '(not running)'}",
                         soft_wrap=True)
    if r["login"]:
        stdout_console.print(f"[bold]login[/bold]        {r['login']} / {r['password']}",
                             soft_wrap=True)
    stdout_console.print(f"[bold]bridge[/bold]       {r['bridge'] or '(not running)'}",
                         soft_wrap=True)
