"""`surgflow broker start|status|stop`: the embedded Kafka-protocol broker."""

from __future__ import annotations

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors
from surgflow.config import get_settings

app = typer.Typer(help="The embedded Kafka-protocol broker.", no_args_is_help=True)


def _describe(b, running: bool, **extra) -> dict:
    base = {"running": running, "bootstrap": None, "pid": None, "cluster_id": None}
    if b is not None:
        base |= {"bootstrap": b.bootstrap, "pid": b.pid, "cluster_id": b.cluster_id,
                 "log": b.log_path}
    return base | extra


@app.command("start")
@handle_errors
def start(as_json: bool = JsonOption) -> None:
    """Start the embedded broker (or report the one already running)."""
    from surgflow.feedback import broker

    settings = get_settings()
    b, started = broker.start(settings.home)
    emit(_describe(b, True, started=started, external=settings.kafka_bootstrap), as_json)


@app.command("status")
@handle_errors
def status(as_json: bool = JsonOption) -> None:
    """Whether the embedded broker is running, and where."""
    from surgflow.feedback import broker

    settings = get_settings()
    b = broker.status(settings.home)
    emit(_describe(b, b is not None, external=settings.kafka_bootstrap), as_json)


@app.command("stop")
@handle_errors
def stop(as_json: bool = JsonOption) -> None:
    """Stop the embedded broker; its topics are gone with it (it keeps them in memory)."""
    from surgflow.feedback import broker

    b = broker.stop(get_settings().home)
    emit(_describe(b, False, stopped=b is not None), as_json)
