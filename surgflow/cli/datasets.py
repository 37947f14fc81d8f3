"""`surgflow data versions|show|query|diff|gc|pin`: versions, queries, pins (SPEC §6, §7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors, stdout_console
from surgflow.config import get_settings
from surgflow.errors import BadInput

if TYPE_CHECKING:
    from surgflow.data.versions import DatasetStore

# The store (pyarrow, DuckDB) is imported by the commands that use it, not by every command.
app = typer.Typer()
GC_GRACE_S = 900.0  # the store's DEFAULT_GC_GRACE_S (tests/test_cli_datasets.py checks)


def store() -> DatasetStore:
    from surgflow.data.versions import DatasetStore

    return DatasetStore(get_settings().home)


def parse_ref(ref: str) -> tuple[str, int | None]:
    from surgflow.data.versions import parse_ref as parse

    return parse(ref)


@app.command("versions")
@handle_errors
def versions(
    dataset: str = typer.Argument(..., help="Dataset name (the procedure)."),
    json_: bool = JsonOption,
):
    """List a dataset's versions, oldest first."""
    emit([m.summary() for m in store().versions(dataset)], json_)


@app.command("show")
@handle_errors
def show(
    ref: str = typer.Argument(..., metavar="DATASET[@VERSION]", help="Latest by default."),
    json_: bool = JsonOption,
):
    """Statistics and fingerprint of one dataset version."""
    name, version = parse_ref(ref)
    emit(store().manifest(name, version).show(), json_)


@app.command("query")
@handle_errors
def query(
    sql: str = typer.Argument(..., help="One read-only SELECT over `videos` and `segments`."),
    json_: bool = JsonOption,
):
    """Read-only SQL over registered videos and the latest version of every dataset."""
    from surgflow.data.query import query as run_query

    emit(run_query(get_settings().home, sql), json_)


@app.command("diff")
@handle_errors
def diff(
    a: str = typer.Argument(..., metavar="DATASET@A"),
    b: str = typer.Argument(..., metavar="DATASET@B"),
    json_: bool = JsonOption,
):
    """Videos and labelled frames added, removed and relabelled from A to B."""
    from surgflow.data.query import diff as diff_versions

    emit(diff_versions(get_settings().home, parse_ref(a), parse_ref(b)), json_, _render_diff)


@app.command("pin")
@handle_errors
def pin(
    ref: str = typer.Argument(..., metavar="DATASET@N"),
    as_: str = typer.Option("field", "--as", help="What the version is pinned as: field."),
    json_: bool = JsonOption,
):
    """Make a dataset version its procedure's field suite (the gate's ground truth)."""
    from surgflow.data.pins import pin as pin_version

    name, version = parse_ref(ref)
    if version is None:
        raise BadInput(f"expected DATASET@N (a version number), got {ref!r}")
    emit(pin_version(get_settings().home, name, version, as_), json_)


@app.command("gc")
@handle_errors
def gc(
    grace_s: float = typer.Option(
        GC_GRACE_S, "--grace-seconds", min=0.0,
        help="Keep unreferenced files younger than this (a commit may still publish them).",
    ),
    json_: bool = JsonOption,
):
    """Remove data files no version references, temp files and stale caches."""
    emit(store().gc(grace_s=grace_s), json_)


def _render_diff(d: dict) -> None:
    f, t = d["from"], d["to"]
    stdout_console.print(f"{f['dataset']}@{f['version']} -> {t['dataset']}@{t['version']}"
                         + ("  (same content)" if d["same_content"] else ""))
    stdout_console.print(f"videos: +{len(d['videos_added'])} -{len(d['videos_removed'])}")
    stdout_console.print(
        f"labelled frames: +{d['frames_added']} -{d['frames_removed']} "
        f"relabelled {d['frames_relabelled']} provenance changed "
        f"{d['frames_provenance_changed']}"
    )
    for c in d["videos_changed"][:20]:
        stdout_console.print(f"  {c['video_id']}: +{c['frames_added']} -{c['frames_removed']} "
                             f"~{c['frames_relabelled']}")
