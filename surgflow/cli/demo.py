"""`surgflow demo`: the whole loop end to end on the embedded default."""

from __future__ import annotations

from typing import Any

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors, stdout_console


def register(app: typer.Typer) -> None:
    @app.command("demo")
    @handle_errors
    def demo(
        duration: float = typer.Option(40.0, "--duration", help="Seconds per synthetic video."),
        seed: int = typer.Option(0, "--seed"),
        no_train: bool = typer.Option(False, "--no-train", help="Stop after the datasets."),
        keep_running: bool = typer.Option(
            False, "--keep-running",
            help="Leave the embedded broker and Prefect server the demo started running.",
        ),
        json_: bool = JsonOption,
    ):
        """Synthetic videos → Kafka → dataset versions → feedback tasks → DDP training."""
        import os

        from flows.runtime import ensure_server, running_server, stop_server
        from surgflow.config import get_settings
        from surgflow.feedback import broker

        settings = get_settings()
        had_prefect = bool(os.environ.get("PREFECT_API_URL") or running_server(settings.home))
        had_broker = bool(settings.kafka_bootstrap or broker.status(settings.home))
        try:
            # Prefect reads PREFECT_API_URL when it is first imported: start or find the
            # server before anything imports prefect.
            ensure_server(settings.home)
            from flows.demo import DemoParams, demo_flow

            result = demo_flow(DemoParams(duration_s=duration, seed=seed, train=not no_train))
        finally:
            if not keep_running:
                if not had_broker:
                    broker.stop(settings.home)
                if not had_prefect:
                    stop_server(settings.home)
        result["home"] = str(settings.home)
        emit(result, json_, _render)


def _render(r: dict[str, Any]) -> None:
    c = stdout_console
    c.print(f"[bold]uploaded[/bold] {r['videos']} videos; published {r['published']}")
    for key, title in (("feedback_first", "feedback run 1"), ("feedback_second", "feedback run 2")):
        f = r[key]
        versions = ", ".join(f"{v['dataset']}@{v['version']}" for v in f["versions_created"])
        c.print(
            f"[bold]{title}[/bold]: consumed {f['consumed']}, applied {f['applied']}, "
            f"tasks created {f['tasks_created']}, dead-lettered {f['dead_lettered']} "
            f"→ {versions or 'no new version'}"
        )
    c.print(f"[bold]annotators answered[/bold] {r['tasks_answered']} feedback tasks")
    d = r["dataset"]
    c.print(
        f"[bold]dataset[/bold] {d['dataset']}@{d['version']}: {d['videos']} videos, "
        f"frames by provenance {d['provenance_frames']}, splits {d['splits']}"
    )
    t = r.get("training")
    if t:
        result = t.get("result") or {}
        c.print(
            f"[bold]training run[/bold] {t['run_id']}: {t['status']}, "
            f"model {result.get('model_version')}"
        )
        for name, stage in (result.get("stages") or {}).items():
            val = (stage.get("final") or {}).get("val") or {}
            if val:
                c.print(f"  {name}: validation accuracy {val['accuracy']:.3f}, "
                        f"macro F1 {val['macro_f1']:.3f} ({val['samples']} samples)")
    c.print(f"done in {r['seconds']} s; state under {r['home']} "
            "(try `surgflow data show cholecystectomy`, `surgflow feedback tasks`, "
            "`surgflow runs list`)")
