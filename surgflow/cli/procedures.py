"""`surgflow procedures add|list`."""

from __future__ import annotations

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors
from surgflow.config import get_settings
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.errors import BadInput

app = typer.Typer(help="Procedures and their label taxonomies.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_(json_: bool = JsonOption):
    """List procedures and their labels."""
    rows = [
        {"name": p.name, "labels": list(p.labels), "builtin": p.builtin}
        for p in ProcedureCatalog(get_settings().home).list()
    ]
    emit(rows, json_)


@app.command("add")
@handle_errors
def add(
    name: str = typer.Argument(..., help="Procedure name (lowercase, digits, '-', '_')."),
    labels: str = typer.Option(..., "--labels", help="Comma-separated labels, in class order."),
    json_: bool = JsonOption,
):
    """Add a procedure, or append labels to one."""
    parts = [x.strip() for x in labels.split(",")]
    if any(not x for x in parts):
        raise BadInput(f"--labels {labels!r}: labels must be non-empty")
    proc, changed = ProcedureCatalog(get_settings().home).add(name, parts)
    emit({"name": proc.name, "labels": list(proc.labels), "changed": changed}, json_)
