"""Running the service: the start-up checks, the :class:`Service` the routes call, uvicorn.

``surgflow serve`` refuses to start without ``SURGFLOW_API_TOKEN`` unless ``--insecure-local``
is given, which only binds a loopback address. Start-up loads every procedure's production chain
before the port opens, then a watcher thread swaps chains as the registry's production pointers
move; with ``--consume`` a fleet member consumes the ``videos`` topic in the same process.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Any

from surgflow.config import Settings
from surgflow.errors import ConfigError, SurgflowError
from surgflow.serving.analysis import analyse
from surgflow.serving.events import EventSink
from surgflow.serving.pool import ModelPool

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_token(settings: Settings, *, insecure_local: bool, host: str) -> str | None:
    """The token requests must carry, or None (``--insecure-local``); ConfigError when the
    service must not start: no token without ``--insecure-local``, or a non-loopback host
    with it."""
    token = settings.api_token.get_secret_value().strip() if settings.api_token else ""
    if insecure_local and not is_loopback(host):
        raise ConfigError(f"--insecure-local serves on loopback only; refusing --host {host!r} "
                          "(use 127.0.0.1, ::1 or localhost, or set SURGFLOW_API_TOKEN and "
                          "drop --insecure-local)")
    if not token:
        if not insecure_local:
            raise ConfigError("SURGFLOW_API_TOKEN is not set; the service refuses to start "
                              "without a bearer token (or pass --insecure-local to serve on "
                              "loopback without one)")
        log.warning("serving without a token on %s (--insecure-local)", host)
        return None
    return token


class Service:
    """What the routes call: the model pool, the event sink and the analysis limiter."""

    def __init__(self, settings: Settings, *, pool: ModelPool, sink: EventSink,
                 token: str | None):
        self.settings, self.pool, self.sink, self.token = settings, pool, sink, token
        self._limiter = None

    def analyze(self, video_id: str, uri: str, procedure: str) -> dict[str, Any]:
        """Analyse and publish; the answer is returned once the event is acknowledged."""
        outcome = analyse(self.pool, self.settings, video_id=video_id, uri=uri,
                          procedure=procedure)
        self.sink.inference(outcome.event)
        return outcome.response

    async def analyze_async(self, video_id: str, uri: str, procedure: str) -> dict[str, Any]:
        import anyio

        if self._limiter is None:  # created on the event loop, on first use
            self._limiter = anyio.CapacityLimiter(self.settings.serve_max_concurrent)
        return await anyio.to_thread.run_sync(self.analyze, video_id, uri, procedure,
                                              limiter=self._limiter)

    def close(self) -> None:
        self.pool.stop()
        self.sink.close()


def build_service(settings: Settings, *, token: str | None, registry=None, publisher=None,
                  watch: bool = True) -> Service:
    """Load every production chain, start the watcher and connect the event sink."""
    from surgflow.feedback.client import Publisher

    pool = ModelPool(settings, registry)
    swapped = pool.refresh()
    log.info("serving %s", ", ".join(swapped) or "no production model yet")
    if watch:
        pool.start()
    publisher = publisher or Publisher.from_settings(settings)
    return Service(settings, pool=pool, sink=EventSink(publisher), token=token)


def _uvicorn(service: Service, host: str, port: int):
    import uvicorn

    from surgflow.serving.app import create_app

    config = uvicorn.Config(create_app(service), host=host, port=port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=30)
    return uvicorn.Server(config)


def serve(settings: Settings, *, host: str, port: int, consume: bool,
          insecure_local: bool) -> None:
    """``surgflow serve``: blocks until SIGINT/SIGTERM; in-flight requests finish first."""
    token = api_token(settings, insecure_local=insecure_local, host=host)
    service = build_service(settings, token=token)
    fleet_stop = threading.Event()
    fleet_thread = None
    try:
        if consume:
            from surgflow.serving.fleet import Fleet

            fleet = Fleet(settings, service.pool, service.sink)
            fleet_thread = threading.Thread(target=_consume, args=(fleet, fleet_stop),
                                            name="surgflow-fleet", daemon=True)
            fleet_thread.start()
        server = _uvicorn(service, host, port)
        log.info("listening on http://%s:%d", host, port)
        server.run()
    finally:
        fleet_stop.set()
        if fleet_thread is not None:
            fleet_thread.join(timeout=60)
        service.close()


def _consume(fleet, stop: threading.Event, backoff_s: float = 5.0) -> None:
    """Run the fleet member until ``stop``; a broker failure restarts it after a pause
    instead of ending fleet mode while HTTP goes on."""
    while not stop.is_set():
        try:
            fleet.run(stop=stop)
        except Exception:
            log.exception("the fleet consumer failed; restarting it in %.0f s", backoff_s)
            stop.wait(backoff_s)


class BackgroundServer:
    """The service on loopback in a thread of this process (tests and benchmarks)."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int | None = None):
        from surgflow.processes import free_port

        self.service, self.host = service, host
        self.port = port or free_port(host)
        self._server = _uvicorn(service, host, self.port)
        self._thread = threading.Thread(target=self._server.run, name="surgflow-http",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise SurgflowError(f"the service did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
