"""The ``surgflow`` command: thin over the library.

Each command group lives in its own module and adds its commands with ``register(app)``.
"""

from __future__ import annotations

import typer

from surgflow.cli import (
    broker,
    datasets,
    demo,
    deployments,
    feedback,
    mlflow_ui,
    models,
    procedures,
    serve,
    stack,
    training,
    videos,
)
from surgflow.cli.common import setup_logging

app = typer.Typer(
    name="surgflow",
    help="Continuous training for surgical-video models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Videos and versioned datasets.", no_args_is_help=True)
feedback_app = typer.Typer(help="The Kafka feedback loop.", no_args_is_help=True)
procedures_app = typer.Typer(help="Procedures and their label taxonomies.", no_args_is_help=True)
broker_app = typer.Typer(help="The embedded Kafka-protocol broker.", no_args_is_help=True)

videos.register(data_app)
datasets.register(data_app)
feedback.register(feedback_app)
procedures.register(procedures_app)
broker.register(broker_app)
training.register(app)
app.command("demo")(demo.demo)
app.command("up")(stack.up)
app.command("down")(stack.down)
app.command("nightly")(deployments.nightly)

app.add_typer(data_app, name="data")
app.add_typer(feedback_app, name="feedback")
app.add_typer(procedures_app, name="procedures")
app.add_typer(models.app, name="models")
app.add_typer(mlflow_ui.app, name="mlflow")
app.add_typer(broker_app, name="broker")
app.add_typer(serve.app)
app.add_typer(deployments.app, name="deployments")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr.")):
    setup_logging(verbose)


def main() -> None:
    app()
