"""`surgflow mlflow ui`: the MLflow UI on surgflow's tracking store and model registry."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import typer

from surgflow.cli.common import JsonOption, emit, handle_errors, stdout_console
from surgflow.errors import BadInput, SurgflowError

app = typer.Typer(help="MLflow: the tracking UI on surgflow's store.", no_args_is_help=True)

START_TIMEOUT_S = 120.0


@app.command("ui")
@handle_errors
def ui(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
    port: int = typer.Option(5000, "--port", min=1, max=65535),
    json_: bool = JsonOption,
):
    """Start the MLflow UI on surgflow's store and print its URL; Ctrl-C stops it.

    The embedded store is the SQLite database and artifact root under SURGFLOW_HOME. With
    MLFLOW_TRACKING_URI set, that server already is the UI: its URL is printed and nothing
    is started."""
    from surgflow import tracking
    from surgflow.config import get_settings
    settings = get_settings()
    uri = tracking.tracking_uri(settings)
    root = tracking.artifact_root(settings)
    if root is None:
        emit({"url": uri, "started": False}, json_,
             lambda d: stdout_console.print(f"MLflow UI: {d['url']} (the tracking server)"))
        return
    _check_port_free(host, port)
    tracking.client(settings)  # creates the store (and runs its migrations) once, locked
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", root, "--host", host, "--port", str(port),
           "--workers", "1"]
    # the server's own logs go to stderr: stdout carries only the command's result
    # its own session: mlflow server runs uvicorn (and a job runner) as children, and they
    # must stop with it
    proc = subprocess.Popen(cmd, stdout=2, stderr=2, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _wait_ready(proc, url)
        emit({"url": url, "started": True, "pid": proc.pid}, json_,
             lambda d: stdout_console.print(f"MLflow UI: {d['url']}  (Ctrl-C stops it)"))
        proc.wait()
        if proc.returncode not in (0, -signal.SIGTERM):
            raise SurgflowError(f"mlflow server on {url} exited with code {proc.returncode}")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_group(proc)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_group(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after ``timeout_s``."""
    pgid = proc.pid  # the session leader's pid is its group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise BadInput(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); "
                           "pick another port") from e


def _wait_ready(proc: subprocess.Popen, url: str) -> None:
    import requests

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SurgflowError(f"mlflow server for {url} exited with code {proc.returncode} "
                                "before answering (its log is on stderr)")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SurgflowError(f"mlflow server did not answer at {url}/health within "
                        f"{START_TIMEOUT_S:.0f} s")
