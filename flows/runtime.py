"""One local Prefect server for this machine's flows, started on demand and reused.

With ``PREFECT_API_URL`` set, that server (or Prefect Cloud) is used as is. Unset, a single
``prefect server start`` runs in the background under ``SURGFLOW_HOME/prefect`` and every later
caller reuses it: Prefect's ephemeral mode would otherwise start a server inside every process
that runs a flow, Dask workers included (slow, and their SQLite databases lock each other).
The server's address is exported as ``PREFECT_API_URL`` so child processes find it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from surgflow.config import get_settings
from surgflow.errors import ConfigError, SurgflowError
from surgflow.processes import free_port, pid_alive, terminate
from surgflow.storage import json_bytes, locked, read_json, write_atomic


@dataclass
class ServerProcess:
    """A Prefect server this process started."""

    api_url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def start_server(prefect_home: Path, *, port: int | None = None,
                 timeout: float = 120.0) -> ServerProcess:
    """Start ``prefect server start`` on loopback and wait until /api/health answers."""
    prefect_home = Path(prefect_home)
    prefect_home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    # The UI is served too, so the "View at http://.../runs/..." links Prefect prints open; it
    # must be told the API's own port (by default it looks for 127.0.0.1:4200).
    env |= {"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": api_url,
            "PREFECT_UI_URL": ui_url(api_url), "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port)}
    exe = Path(sys.executable).with_name("prefect")
    cmd = [str(exe) if exe.exists() else "prefect", "server", "start", "--host", "127.0.0.1",
           "--port", str(port)]
    log_path = prefect_home / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = ServerProcess(api_url, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SurgflowError(f"prefect server exited with {proc.returncode}; see {log_path}")
        if healthy(api_url):
            return server
        time.sleep(0.5)
    server.stop()
    raise SurgflowError(f"prefect server did not answer {api_url}/health in {timeout:.0f} s; "
                        f"see {log_path}")


def ui_url(api_url: str) -> str:
    """The Prefect UI of the server whose API is ``api_url``."""
    return api_url.rstrip("/").removesuffix("/api")


def drain(timeout: float = 10.0) -> None:
    """Send this process's queued Prefect logs and events now.

    Call it before stopping a server this process started: at interpreter exit Prefect would
    otherwise keep retrying them against the stopped server for about a minute.
    """
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)


def export(api_url: str) -> None:
    """Point this process and its children at ``api_url``.

    Prefect reads its settings when it is first imported, so call this before importing
    Prefect (or a flow module); later changes need ``prefect.settings.temporary_settings``.
    """
    os.environ["PREFECT_API_URL"] = api_url
    os.environ["PREFECT_UI_URL"] = ui_url(api_url)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"


def _wait_healthy(url: str, pid: int, timeout: float) -> bool:
    """True once the recorded server answers; a busy machine may make a live server slow to
    answer, so wait for it while its process lives rather than start a second one."""
    deadline = time.monotonic() + timeout
    while True:
        if healthy(url):
            return True
        if not pid_alive(pid) or time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def ensure_server(home: Path | None = None, timeout: float = 120.0) -> str:
    """The API URL of a running Prefect server, starting one under ``home`` if needed.

    Call it before Prefect is imported (see :func:`export`).
    """
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not healthy(configured, timeout=5.0):
            raise ConfigError(f"PREFECT_API_URL: no Prefect server answers at {configured}")
        export(configured)
        return configured
    home = Path(home or get_settings().home)
    state_dir = home / "prefect"
    with locked(state_dir / "server.lock"):  # two commands starting at once share one server
        known = _recorded(home)
        if known and _wait_healthy(known["api_url"], known["pid"], timeout):
            export(known["api_url"])
            return known["api_url"]
        server = start_server(state_dir, timeout=timeout)
        write_atomic(_state_path(home),
                     json_bytes({"api_url": server.api_url, "pid": server.process.pid}))
    export(server.api_url)
    return server.api_url


def _state_path(home: Path) -> Path:
    return Path(home) / "prefect" / "server.json"


def _recorded(home: Path) -> dict | None:
    """``{"api_url", "pid"}`` of the server recorded under ``home``; None if none or unreadable."""
    data = read_json(_state_path(home))
    if not isinstance(data, dict) or not data.get("api_url"):
        return None
    return {"api_url": str(data["api_url"]), "pid": int(data.get("pid", 0))}


def running_server(home: Path) -> str | None:
    """The API URL of the server recorded under ``home`` if it answers, else None."""
    known = _recorded(home)
    return known["api_url"] if known and healthy(known["api_url"]) else None


def stop_server(home: Path, timeout: float = 20.0) -> bool:
    """Stop the server recorded under ``home``; True if one was running."""
    drain()
    with locked(Path(home) / "prefect" / "server.lock"):
        known = _recorded(home)
        _state_path(home).unlink(missing_ok=True)
        return bool(known) and terminate(known["pid"], timeout, program="prefect")
