"""The ``surgflow`` command: thin over the library.

Each command group is a module with its own ``typer.Typer()`` and module-level commands, added
here with ``add_typer``; ``feedback`` still adds its commands with ``register(app)``.
"""

from __future__ import annotations

import typer

from surgflow.cli import (
    annotate,
    broker,
    datasets,
    demo,
    deployments,
    drift,
    feedback,
    mlflow_ui,
    models,
    privacy,
    procedures,
    serve,
    stack,
    sweep,
    training,
    videos,
)
from surgflow.cli.common import setup_logging, skip_pandas_probe

app = typer.Typer(
    name="surgflow",
    help="Continuous training for surgical-video models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Videos and versioned datasets.", no_args_is_help=True)
data_app.add_typer(videos.app)
data_app.add_typer(datasets.app)
feedback_app = typer.Typer(help="The Kafka feedback loop.", no_args_is_help=True)
feedback.register(feedback_app)

app.command("train")(training.train)
app.command("demo")(demo.demo)
app.command("up")(stack.up)
app.command("down")(stack.down)
app.command("nightly")(deployments.nightly)

app.add_typer(training.runs_app, name="runs")
app.add_typer(data_app, name="data")
app.add_typer(feedback_app, name="feedback")
app.add_typer(procedures.app, name="procedures")
app.add_typer(models.app, name="models")
app.add_typer(mlflow_ui.app, name="mlflow")
app.add_typer(broker.app, name="broker")
app.add_typer(serve.app)
app.add_typer(deployments.app, name="deployments")
app.add_typer(annotate.app, name="annotate")
app.add_typer(privacy.app, name="privacy")
app.add_typer(drift.app, name="drift")
app.add_typer(sweep.app, name="sweep")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr.")):
    setup_logging(verbose)


def main() -> None:
    skip_pandas_probe()
    app()
