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
from dataclasses import dataclass
from pathlib import Path

import httpx

from surgflow.config import get_settings
from surgflow.errors import ConfigError
from surgflow.processes import free_port, terminate
from surgflow.services import Launch, Supervisor, start

NAME, POLL_S = "prefect server", 0.5


@dataclass
class ServerProcess:
    """A Prefect server this process started."""

    api_url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 20.0) -> None:
        terminate(self.process.pid, timeout, group=True)
        self.process.poll()  # terminate reaped it; let the Popen know


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _launch(prefect_home: Path, port: int | None = None) -> Launch:
    """``prefect server start`` on loopback, its database under ``prefect_home``."""
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
    return Launch(cmd, f"{api_url}/health", {"api_url": api_url}, env)


def _healthy(record: dict) -> bool:
    return healthy(str(record.get("api_url", "")))


def start_server(prefect_home: Path, *, port: int | None = None,
                 timeout: float = 120.0) -> ServerProcess:
    """Start ``prefect server start`` on loopback and wait until /api/health answers (a
    server of the caller's own, never recorded for others to reuse)."""
    prefect_home = Path(prefect_home)
    how = _launch(prefect_home, port)
    log_path = prefect_home / "server.log"
    proc = start(how.cmd, log_path, lambda: _healthy(how.record), name=NAME, where=how.where,
                 timeout_s=timeout, poll_s=POLL_S, env=how.env)
    return ServerProcess(how.record["api_url"], proc, log_path)


def supervisor(home: Path, timeout: float = 120.0) -> Supervisor:
    """The supervisor of the server shared under ``home`` (state in ``home/prefect``)."""
    state_dir = Path(home) / "prefect"
    return Supervisor(NAME, state_dir / "server.json", state_dir / "server.lock",
                      state_dir / "server.log", program="prefect", healthy=_healthy,
                      start_timeout_s=timeout, poll_s=POLL_S)


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
    # Prefect's client has analytics of its own, with a first-run notice in a terminal.
    os.environ.setdefault("DO_NOT_TRACK", "1")


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
    # a recorded server whose process lives may just be slow to answer on a busy machine:
    # wait for it rather than start a second one
    record, _ = supervisor(home, timeout).ensure(lambda: _launch(home / "prefect"),
                                                 reuse_wait_s=timeout)
    export(record["api_url"])
    return record["api_url"]


def running_server(home: Path) -> str | None:
    """The API URL of the server recorded under ``home`` if it answers, else None."""
    record = supervisor(home).running()
    return record["api_url"] if record else None


def stop_server(home: Path, timeout: float = 20.0) -> bool:
    """Stop the server recorded under ``home``; True if one was running."""
    drain()
    return supervisor(home).stop(timeout) is not None
