"""`surgflow drift show`: each source's latest inference against its production reference."""

from __future__ import annotations

from typing import Any

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors, stdout_console
from surgflow.config import get_settings

app = typer.Typer(help="Drift of the inference stream from what production was trained on.",
                  no_args_is_help=True)


@app.command("show")
@handle_errors
def show(
    procedure: str | None = typer.Argument(None, help="Only this procedure (default: all)."),
    json_: bool = JsonOption,
) -> None:
    """Run one watch pass (no triggers) and show each source's drift."""
    from surgflow.drift.watch import watch

    emit([r.as_json() for r in watch(get_settings(), procedure).reports], json_, _render)


def _render(reports: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from surgflow.drift.stats import FEATURES

    if not reports:
        stdout_console.print("no source observed by a production model yet")
        return
    table = Table("procedure", "source", "videos", "model", *FEATURES, "drifted",
                  title="PSI of each feature against the production version's training view")
    for r in reports:
        cells = []
        for name in FEATURES:
            f = r["features"].get(name)
            over = f is not None and f["psi"] > r["psi_above"]
            cells.append("–" if f is None else
                         f"[red]{f['psi']:.3f}[/red]" if over else f"{f['psi']:.3f}")
        table.add_row(r["procedure"], r["source"], str(r["videos"]), r["model"], *cells,
                      "[red]yes[/red]" if r["drifted"] else "no")
    stdout_console.print(table)
    first = reports[0]
    stdout_console.print(f"drifted: at least {first['min_videos']} videos and a PSI above "
                         f"{first['psi_above']:g}", soft_wrap=True)
