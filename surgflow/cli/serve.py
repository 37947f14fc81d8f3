"""`surgflow serve` (the inference service, SPEC §8) and `surgflow highlights VIDEO_ID`."""

from __future__ import annotations

from pathlib import Path

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors
from surgflow.config import get_settings

app = typer.Typer()


@app.command("serve")
@handle_errors
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to bind."),
    consume: bool = typer.Option(False, "--consume",
                                 help="Also analyse every video of the videos topic, as a "
                                      "member of the inference fleet's consumer group."),
    insecure_local: bool = typer.Option(False, "--insecure-local",
                                        help="Serve without SURGFLOW_API_TOKEN, on loopback "
                                             "only."),
):
    """Serve every procedure's production chain over HTTP until interrupted."""
    from surgflow.serving.server import serve as run

    run(get_settings(), host=host, port=port, consume=consume, insecure_local=insecure_local)


@app.command("highlights")
@handle_errors
def highlights(
    video_id: str = typer.Argument(..., help="A registered video."),
    out: Path = typer.Option(None, "--out", dir_okay=False,
                             help="MP4 to write (default: VIDEO_ID-highlights.mp4)."),
    before: float = typer.Option(2.0, "--before", min=0.0, help="Seconds before a transition."),
    after: float = typer.Option(3.0, "--after", min=0.5, help="Seconds after a transition."),
    json_: bool = JsonOption,
):
    """A short reel of a video's phase transitions, phase and time drawn on each frame."""
    from surgflow.serving.highlights import make_highlights

    result = make_highlights(get_settings(), video_id, out, before_s=before, after_s=after)
    emit(result, json_, _render)


def _render(result: dict) -> None:
    from surgflow.cli.common import stdout_console

    stdout_console.print(f"{result['out']}: {result['clips']} clips, {result['seconds']:.1f} s, "
                         f"{len(result['key_moments'])} phase transitions "
                         f"({result['model']['name']}@{result['model']['version']})")
