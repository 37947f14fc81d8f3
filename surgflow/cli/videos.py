"""`surgflow data ingest|quarantine|videos`: registering videos and listing them."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from surgflow.cli.common import (
    JsonOption,
    emit,
    handle_errors,
    progress,
    stderr_console,
    stdout_console,
)
from surgflow.config import get_settings
from surgflow.data.registry import VideoRegistry

app = typer.Typer()


def registry() -> VideoRegistry:
    s = get_settings()
    return VideoRegistry(s.home, s.resolved_video_roots())


@app.command("ingest")
@handle_errors
def ingest(
    paths: list[Path] = typer.Argument(..., help="Video files; the video_id is the file stem."),
    procedure: str = typer.Option(..., "--procedure", "-p", help="Procedure of every file."),
    source: str = typer.Option(..., "--source", "-s", help="Where the videos come from."),
    json_: bool = JsonOption,
):
    """Probe, hash and register local video files; bad files are quarantined."""
    reg = registry()
    with progress("ingesting", total=len(paths)) as advance:
        report = reg.ingest(paths, procedure=procedure, source=source, on_done=advance)
    emit(report, json_, _render_ingest)
    failed = len(report["quarantined"]) + len(report["conflicts"])
    if failed:
        first = (report["quarantined"] + report["conflicts"])[0]
        stderr_console.print(
            f"error: {failed} of {len(paths)} file(s) not registered; first: {first['reason']}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)


class Reason(StrEnum):
    registration = "registration"
    privacy = "privacy"


@app.command("quarantine")
@handle_errors
def quarantine(
    reason: Reason = typer.Option(
        Reason.registration, "--reason",
        help="registration: files that could not be registered; privacy: registered videos "
             "held from people until the production out-of-body detector clears them."),
    json_: bool = JsonOption,
):
    """List what could not be registered (or is held for privacy), each with its reason."""
    if reason is Reason.registration:
        emit([e.model_dump(mode="json") for e in registry().quarantined()], json_)
        return
    from surgflow.data.privacy import clearance
    from surgflow.serving.screening import privacy_policy

    settings = get_settings()
    policy = privacy_policy(settings)
    rows = []
    for video in registry().list():
        c = clearance(settings.home, video, policy)
        if not c.cleared:
            rows.append({"video_id": video.video_id, "uri": video.uri, "reason": c.reason,
                         "detector": c.detector})
    emit(rows, json_)


@app.command("videos")
@handle_errors
def videos(json_: bool = JsonOption):
    """List registered videos."""
    rows = [
        r.model_dump(
            mode="json",
            include={
                "video_id",
                "procedure",
                "source",
                "num_frames",
                "fps",
                "width",
                "height",
                "sha256",
            },
        )
        for r in registry().list()
    ]
    emit(rows, json_)


def _render_ingest(report: dict) -> None:
    for row in report["registered"]:
        stdout_console.print(
            f"registered {row['video_id']} ({row['num_frames']} frames @ {row['fps']:.2f} fps)"
        )
    for row in report["duplicates"]:
        stdout_console.print(f"unchanged  {row['video_id']} (same content already registered)")
    for row in report["quarantined"]:
        stdout_console.print(
            f"[red]quarantined[/red] {row['uri']}: {row['reason']}", soft_wrap=True
        )
    for row in report["conflicts"]:
        stdout_console.print(f"[red]conflict[/red] {row['uri']}: {row['reason']}", soft_wrap=True)
