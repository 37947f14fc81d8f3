"""`surgflow demo`: the whole loop, closed, on the embedded default.

See :mod:`surgflow.cli.local.demo` for what it does.

The terminal shows one line per stage with its time; everything Prefect, Dask, uvicorn and
MLflow log goes to ``SURGFLOW_HOME/logs/`` (this process's own to ``demo.log``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from surgflow.cli.common import JsonOption, emit, handle_errors, stderr_console, stdout_console


@handle_errors
def demo(
    size: str = typer.Option("default", "--size", help="small | default | large: how many "
                             "videos, how long, how many epochs."),
    seed: int = typer.Option(0, "--seed"),
    keep_running: bool = typer.Option(
        False, "--keep-running",
        help="Leave the stack running and print its URLs (stop it with `surgflow down`)."),
    json_: bool = JsonOption,
) -> None:
    """The whole loop, closed: two hospitals → v1 → a third hospital → v2, by itself.

    Hospitals A and B upload annotated videos; v1 trains, is gated and promoted; the inference
    service analyses hospital C's videos with v1; annotators answer the feedback tasks; the new
    source triggers v2's pipeline, which is gated against v1 and hot-swapped in if it passes.
    """
    from surgflow.cli.local.prefect_server import ensure_server
    from surgflow.config import get_settings
    from surgflow.errors import BadInput

    settings = get_settings()
    from surgflow.cli.local.demo import SIZES

    if size not in SIZES:
        raise BadInput(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    log_path = settings.home / "logs" / "demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ensure_server(settings.home)  # Prefect reads PREFECT_API_URL when first imported
    with _logs_to(log_path):
        from surgflow.cli.local.demo import run_demo

        report = run_demo(settings, size, _step(not json_), seed=seed,
                          keep_running=keep_running, log_path=log_path)
    emit(report.as_json(), json_, _render)


@contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Send every library's log records to ``path`` instead of the terminal."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def reroute() -> None:
        for logger in [logging.getLogger(), *(
                logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]:
            for h in list(logger.handlers):
                to_terminal = (isinstance(h, logging.StreamHandler)
                               and not isinstance(h, logging.FileHandler)
                               and getattr(h, "stream", None) in (sys.stderr, sys.stdout))
                if to_terminal or type(h).__name__ == "PrefectConsoleHandler":
                    logger.removeHandler(h)
        root = logging.getLogger()
        if handler not in root.handlers:
            root.addHandler(handler)
        surgflow = logging.getLogger("surgflow")
        if handler not in surgflow.handlers:
            surgflow.addHandler(handler)

    import prefect  # noqa: F401 (configures its logging on import; reroute after)

    reroute()
    try:
        yield
    finally:
        handler.flush()


def _step(show: bool):
    @contextmanager
    def step(text: str) -> Iterator[None]:
        started = time.monotonic()
        logging.getLogger("surgflow.demo").info("step: %s", text)
        if not show:
            yield
            return
        try:
            with stderr_console.status(text):
                yield
        except BaseException:
            stderr_console.print(f"[red]✗[/red] {text} ({time.monotonic() - started:.0f} s)")
            raise
        stderr_console.print(f"[green]✓[/green] {text} [dim]({time.monotonic() - started:.0f} s)"
                             "[/dim]")

    return step


def _render(r: dict[str, Any]) -> None:
    c = stdout_console
    versions = Table("dataset version", "videos", "sources", "events", title="datasets")
    for v in r["versions"]:
        versions.add_row(f"cholecystectomy@{v['version']}", str(v["videos"]),
                         ", ".join(f"{k} {n}" for k, n in sorted(v["sources"].items())),
                         str(v["events_applied"]))
    c.print(versions)
    models = Table("model", "trained on", "verdict", "stages", title="models")
    for m in r["models"]:
        models.add_row(f"{m['name']}@{m['version']}", ", ".join(m.get("dataset_versions") or []),
                       str(m.get("verdict")), ", ".join(m.get("stages") or []) or "–")
    c.print(models)
    field = Table("hospital", "v1", "v2", title="field macro-F1 (pinned field suite)",
                  min_width=44)
    for source, f in sorted(r["field_by_source"].items()):
        field.add_row(source, _num(f["baseline"]), _num(f["candidate"]))
    if r["field_by_source"]:
        c.print(field)
    if r.get("annotation"):
        a = r["annotation"]
        c.print(f"[bold]{'feedback tasks':18}[/bold] {a['sent']} sent to Label Studio, "
                f"{a['answered']} answered there, {a['merged']} merged into a version",
                soft_wrap=True)
        if a.get("out_of_body"):
            c.print(f"{'':18} {a['out_of_body']} not sent: their whole range is out of the "
                    "body, black for people", soft_wrap=True)
    if r.get("privacy"):
        p = r["privacy"]
        share = p["out_of_body_black"] / p["out_of_body_frames"] if p["out_of_body_frames"] \
            else 1.0
        c.print(f"[bold]{'privacy':18}[/bold] {p['detector']} screened {p['videos_screened']} "
                f"videos and found {p['screened_s']:.0f} s out of the body", soft_wrap=True)
        c.print(f"{'':18} C's people media: {share:.1%} of {p['out_of_body_frames']} "
                f"out-of-body frames black, {p['blacked_out_s']:.0f} s in all "
                f"({p['in_body_lost_share']:.1%} of in-body)", soft_wrap=True)
    if r.get("drift"):
        d = r["drift"]
        c.print(f"[bold]{'drift':18}[/bold] {d['why']}, before any label of hospital C",
                soft_wrap=True)
        c.print(f"{'':18} its retrain: {d['retrain']}", soft_wrap=True)
    firings = Table("recipe", "fired on", "why", title="trigger firings")
    for f in r["firings"]:
        drift = f.get("drift")
        firings.add_row(f["recipe"], f"{drift['source']} vs {drift['model']}" if drift
                        else f["cause"], f["why"])
    c.print(firings)
    for label, key in (("comparison report", "report_path"), ("highlight reel", "highlights"),
                       ("log", "log")):
        if r.get(key):  # a path broken over two lines cannot be pasted
            c.print(f"[bold]{label:18}[/bold] {r[key]}", soft_wrap=True)
    titles = {"prefect_ui": "Prefect UI", "dask_dashboard": "Dask dashboard",
              "mlflow_ui": "MLflow UI", "inference_service": "inference service",
              "label_studio": "Label Studio", "label_studio_login": "  login",
              "annotation_bridge": "annotation bridge",
              "kafka_bootstrap": "Kafka bootstrap", "logs": "logs"}
    for key, url in (r.get("urls") or {}).items():
        if url:
            c.print(f"[bold]{titles.get(key, key):18}[/bold] {url}", soft_wrap=True)
    if r.get("urls"):
        c.print("the stack is still running; stop it with `surgflow down`")
    c.print(f"done in {r['seconds']:.0f} s; state under {r['home']}")


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"
