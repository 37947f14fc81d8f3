"""`surgflow feedback run|publish|tasks`: the Kafka feedback loop (SPEC §6)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors, log, spinner
from surgflow.config import get_settings
from surgflow.errors import BadInput
from surgflow.feedback.consumer import FOLLOW_MAX_EVENTS, FOLLOW_MAX_SECONDS


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("run")
    @handle_errors
    def run(
        once: bool = typer.Option(False, "--once",
                                  help="Consume up to the current end offsets, then exit."),
        max_events: int = typer.Option(FOLLOW_MAX_EVENTS, "--max-events", min=1,
                                       help="Follow mode: commit a version every N events..."),
        max_seconds: float = typer.Option(FOLLOW_MAX_SECONDS, "--max-seconds", min=0.01,
                                          help="...or when its first event is T seconds "
                                               "old, whichever comes first (at once when "
                                               "there is nothing more to read)."),
        group: str = typer.Option(None, "--group",
                                  help="Follow mode: the consumer group to join (default: "
                                       "the topic prefix + 'feedback'). Consumers that share "
                                       "a home share a group."),
        as_json: bool = JsonOption,
    ) -> None:
        """Merge videos, inference outputs and annotations into new dataset versions."""
        stop = threading.Event()
        if not once:
            # SIGTERM or Ctrl-C: finish the batch in hand, print the totals, exit 0. Installed
            # before connecting, so a stop during start-up is a clean stop too.
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        from surgflow.feedback.consumer import run_feedback
        from surgflow.serving.screening import privacy_hold

        # New versions are announced as Prefect events when a Prefect API is configured;
        # without one the run is the same, only unannounced.
        on_version = None
        if os.environ.get("PREFECT_API_URL"):
            from surgflow_flows.feedback import emit_version_event as on_version

        def batch_done(r) -> None:
            log.info("batch: %s", json.dumps(r.as_follow_json()))

        with spinner("merging feedback up to the current end offsets", enabled=once):
            settings = get_settings()
            report = run_feedback(settings, once=once, max_events=max_events,
                                  max_seconds=max_seconds, stop=stop,
                                  on_batch=None if once else batch_done,
                                  on_version=on_version, group_id=group,
                                  hold=privacy_hold(settings))
        if on_version is not None:
            from surgflow.cli.local.prefect_server import drain

            drain()  # the events are queued in this process, which exits now
        emit(report.as_json() if once else report.as_follow_json(), as_json)

    @app.command("publish")
    @handle_errors
    def publish(
        kind: str = typer.Argument(..., help="video, inference or annotation"),
        file: Path = typer.Argument(..., help="a JSON object, or a list of them ('-' for stdin)"),
        as_json: bool = JsonOption,
    ) -> None:
        """Validate and send events to their topic (acks=all, keyed by video_id)."""
        import sys

        from surgflow.feedback.client import Publisher

        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text()
        except OSError as e:
            raise BadInput(f"cannot read {file}: {e.strerror}") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadInput(f"{file}: not JSON: {e.msg} at line {e.lineno}") from e
        events = data if isinstance(data, list) else [data]
        with Publisher.from_settings(get_settings()) as pub:
            sent = [pub.publish(kind, e) for e in events]
            pub.flush()
        emit({"published": len(sent), "kind": kind,
              "event_ids": [e.event_id for e in sent]}, as_json)

    @app.command("tasks")
    @handle_errors
    def tasks(
        status: str = typer.Option(None, "--status",
                                   help="open, completed or closed (default: all)"),
        as_json: bool = JsonOption,
    ) -> None:
        """Feedback tasks: open, completed by an annotation naming them, or closed by human labels
        that cover their range."""
        from surgflow.feedback.tasks import TaskLedger

        if status not in (None, "open", "completed", "closed"):
            raise BadInput(f"--status must be open, completed or closed, got {status!r}")
        rows = TaskLedger(get_settings().home).list()
        emit([t for t in rows if status is None or t["status"] == status], as_json, _render_tasks)

    @app.command("dlq")
    @handle_errors
    def dead_letters(as_json: bool = JsonOption) -> None:
        """Dead letters: each rejected message, where it came from and why."""
        from surgflow.feedback import broker, dlq

        settings = get_settings()
        if settings.kafka_bootstrap is None and broker.status(settings.home) is None:
            # a new embedded broker would hold no topics: do not start one just to read nothing
            emit([], as_json)
            return
        letters = dlq.read_all(broker.bootstrap(settings), settings.topic("dlq"))
        emit([d.as_dict() for d in letters], as_json)


def _render_tasks(rows: list[dict]) -> None:
    from surgflow.cli.common import render_auto

    render_auto([
        {"task": t["task_id"], "video": t["video_id"],
         "frames": f"{t['start_frame']}-{t['end_frame']}", "predicted": t["predicted_label"],
         "confidence": f"{t['confidence']:.2f}",
         "model": f"{t['model']['name']}@{t['model']['version']}", "status": t["status"]}
        for t in rows
    ])
