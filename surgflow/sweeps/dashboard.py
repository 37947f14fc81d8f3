"""optuna-dashboard on the sweeps' study store, served on loopback until interrupted.

The dashboard has no sign-in, so it binds 127.0.0.1 only. Its pages read the store directly:
studies, trials, intermediate values (the pruned trials' curves), parameter importances.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from surgflow.errors import BadInput, NotFound

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: a dashboard page asks for several things at once."""

    daemon_threads = True


class _Handler(WSGIRequestHandler):
    """Request lines go to the log at debug level, not to stderr one by one."""

    def log_message(self, format: str, *args: object) -> None:
        log.debug("dashboard: " + format, *args)


def study_id(storage_url: str, study: str) -> int:
    """The id of ``study`` in the store (its dashboard page); NotFound when it has none."""
    import optuna

    from surgflow.sweeps.study import masked
    from surgflow.training.pruning import engine_kwargs

    storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=engine_kwargs(storage_url))
    try:
        return storage.get_study_id_from_name(study)
    except KeyError as e:
        raise NotFound(f"no study {study!r} in {masked(storage_url)}; "
                       f"`surgflow sweep` a recipe named {study!r} first") from e


def serve(storage_url: str, port: int, *, study: str | None = None,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard on ``127.0.0.1:port`` (the page of ``study`` when given) and call
    ``on_ready(url)`` once it listens; returns when interrupted (Ctrl-C or SIGTERM)."""
    import signal
    from wsgiref.simple_server import make_server

    import optuna_dashboard

    if storage_url.startswith("sqlite:///"):
        Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    page = f"/dashboard/studies/{study_id(storage_url, study)}" if study else "/dashboard"
    app = optuna_dashboard.wsgi(storage_url)
    try:
        server = make_server(HOST, port, app, server_class=_Server,
                             handler_class=_Handler)
    except OSError as e:
        raise BadInput(f"--port {port}: cannot listen on {HOST}:{port} ({e.strerror}); "
                       "pick another port") from e
    url = f"http://{HOST}:{server.server_port}{page}"
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if on_ready is not None:
            on_ready(url)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
