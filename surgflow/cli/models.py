"""`surgflow models architectures`: what the model registry can build."""

from __future__ import annotations

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("architectures")
    @handle_errors
    def architectures(json_: bool = JsonOption):
        """Architectures a recipe may name: clip/frame models (stage 1) and temporal models."""
        from surgflow.training.models import architectures as rows

        emit(rows(), json_)
