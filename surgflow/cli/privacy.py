"""`surgflow privacy screen|show`: out-of-body screening and what people may see of a video."""

from __future__ import annotations

from typing import Any

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors, progress, stdout_console
from surgflow.config import get_settings

app = typer.Typer(help="Patient privacy: out-of-body screening and redaction.",
                  no_args_is_help=True)


@app.command("screen")
@handle_errors
def screen(
    video_ids: list[str] = typer.Argument(None, help="Videos to screen (default: every "
                                                     "registered video)."),
    json_: bool = JsonOption,
) -> None:
    """Run the production out-of-body detector over the videos it has not screened yet."""
    from surgflow.data.registry import VideoRegistry
    from surgflow.serving.screening import screen as run

    settings = get_settings()
    total = len(video_ids) if video_ids else len(
        VideoRegistry(settings.home, settings.resolved_video_roots()).list())
    with progress("screening", total=total) as advance:
        report = run(settings, video_ids or None, on_video=lambda _: advance())
    emit(report.as_json(), json_, _render_screen)


@app.command("show")
@handle_errors
def show(video_id: str = typer.Argument(..., help="A registered video."),
         json_: bool = JsonOption) -> None:
    """Whether a video may be shown to people, and which frames are blacked out."""
    from surgflow.data.privacy import ScreeningLedger, clearance, frames_in
    from surgflow.data.registry import VideoRegistry
    from surgflow.serving.screening import privacy_policy

    settings = get_settings()
    video = VideoRegistry(settings.home, settings.resolved_video_roots()).get(video_id)
    c = clearance(settings.home, video, privacy_policy(settings))
    out = c.model_dump(mode="json") | {
        "out_of_body_s": round(frames_in(c.out_of_body) / video.fps, 3),
        "blackout_s": round(frames_in(c.blackout) / video.fps, 3),
        "screenings": [s.model_dump(mode="json")
                       for s in ScreeningLedger(settings.home).of_video(video_id)]}
    emit(out, json_, _render_show)


def _render_screen(r: dict[str, Any]) -> None:
    if r["detector"] is None:
        stdout_console.print(f"no out-of-body detector in production: {r['held']} videos stay "
                             "held from people", soft_wrap=True)
        return
    stdout_console.print(
        f"{r['detector']}: {len(r['screened'])} screened, {r['already_screened']} already, "
        f"{len(r['failed'])} failed; {r['out_of_body_s']:.0f} s out of the body found",
        soft_wrap=True)
    for f in r["failed"]:
        stdout_console.print(f"[red]failed[/red] {f['video_id']}: {f['reason']}", soft_wrap=True)


def _render_show(r: dict[str, Any]) -> None:
    state = "[green]cleared[/green]" if r["cleared"] else "[red]held[/red]"
    stdout_console.print(f"{r['video_id']}: {state}: {r['reason']}", soft_wrap=True)
