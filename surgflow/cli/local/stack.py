"""The local stack behind ``surgflow up`` / ``surgflow down`` (and the demo).

``up`` starts, on loopback: one Prefect server (with its UI), the embedded Kafka-protocol broker,
a Dask scheduler with worker processes, the MLflow UI, the inference service in fleet mode, the
feedback flow in follow mode, Label Studio and the annotation bridge that serves it media and
takes its webhooks, and the served deployments (nightly, triggers, annotation sync, one per
recipe).
Every process it starts gets the same ``PREFECT_API_URL``, ``SURGFLOW_KAFKA_BOOTSTRAP``,
``SURGFLOW_DASK_ADDRESS`` and ``SURGFLOW_ANNOTATION_URL``, writes its log under
``SURGFLOW_HOME/logs``, and is recorded in
``SURGFLOW_HOME/stack.json``; ``down`` stops exactly those, newest first, and then the Prefect
server and broker if this stack (or ``surgflow train``, which leaves its server running)
started them. Services configured from outside (``PREFECT_API_URL``,
``SURGFLOW_KAFKA_BOOTSTRAP``, ``SURGFLOW_DASK_ADDRESS``, ``SURGFLOW_LABEL_STUDIO_URL``) are used
and never stopped.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from surgflow.config import Settings, get_settings
from surgflow.errors import BadInput, SurgflowError
from surgflow.processes import free_port, pid_alive, terminate
from surgflow.services import spawn, wait_ready
from surgflow.storage import json_bytes, locked, read_json, write_atomic


@dataclass
class Service:
    name: str
    pid: int
    url: str | None
    log: str


def _state_path(home: Path) -> Path:
    return Path(home) / "stack.json"


def recorded(home: Path) -> dict[str, Any] | None:
    data = read_json(_state_path(home))
    return data if isinstance(data, dict) else None


def surgflow_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "surgflow", *args]


class Stack:
    """The processes of one local stack, recorded as they start."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.home = self.settings.home
        self.logs = self.home / "logs"
        self.services: list[Service] = []
        self.state: dict[str, Any] = {}
        self.env: dict[str, str] = {}

    def check_not_running(self) -> None:
        old = recorded(self.home)
        if old and any(pid_alive(s["pid"]) for s in old["services"]):
            raise BadInput(f"a stack is already running under {self.home} (started "
                           f"{old['started_at']}); stop it with `surgflow down`")

    def start_core(self) -> None:
        """The Prefect server and the broker (each only if not configured from outside)."""
        from surgflow.cli.local.prefect_server import ensure_server, running_server
        from surgflow.feedback import broker

        api_url = ensure_server(self.home)
        # the server recorded under this home (started by `up`, the demo or `surgflow train`)
        # is this stack's to stop; one configured from outside is not
        started_prefect = running_server(self.home) == api_url
        started_broker = False
        if self.settings.kafka_bootstrap:
            bootstrap = self.settings.kafka_bootstrap
        else:
            b, started_broker = broker.start(self.home)
            bootstrap = b.bootstrap
        self.env = dict(os.environ) | {
            "SURGFLOW_HOME": str(self.home), "SURGFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # served deployments pick up triggered runs within seconds
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        }
        self.state = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "prefect_api_url": api_url, "started_prefect": started_prefect,
                      "started_broker": started_broker, "bootstrap": bootstrap}
        self.save()

    def save(self) -> None:
        write_atomic(_state_path(self.home), json_bytes(
            self.state | {"services": [asdict(s) for s in self.services]}))

    def spawn(self, name: str, cmd: list[str], *, url: str | None = None,
              env: dict[str, str] | None = None) -> Service:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        proc = spawn(cmd, log_path, env or self.env)
        service = Service(name, proc.pid, url, str(log_path))
        self.services.append(service)
        self.save()
        return service

    def wait_http(self, service: Service, path: str = "/", timeout_s: float = 300.0) -> None:
        url = f"{service.url}{path}"

        def answers() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        wait_ready(service.pid, answers, name=service.name, where=url,
                   log_path=Path(service.log), timeout_s=timeout_s, poll_s=0.5)

    def wait_triggers(self, service: Service, names: set[str], timeout_s: float = 300.0) -> None:
        """Wait until the Prefect server holds an automation named each of ``names``: the
        triggers ``service`` (the served deployments) registers as it starts. An event emitted
        before they exist crosses no trigger, and nothing would retrain."""
        api = self.state["prefect_api_url"]

        def registered() -> bool:
            try:
                r = httpx.post(f"{api}/automations/filter", json={}, timeout=5)
                return r.status_code == 200 and names <= {a["name"] for a in r.json()}
            except httpx.HTTPError:
                return False

        wait_ready(service.pid, registered, name=service.name,
                   where=f"{api} (its triggers {', '.join(sorted(names))})",
                   log_path=Path(service.log), timeout_s=timeout_s, poll_s=0.5)

    def start_dask(self, workers: int = 2) -> str:
        from surgflow.training.cluster import worker_env

        if self.settings.dask_address:
            address = self.settings.dask_address
        else:
            port, dash = free_port(), free_port()
            address = f"tcp://127.0.0.1:{port}"
            exe = str(Path(sys.executable).with_name("dask"))
            scheduler = self.spawn("dask-scheduler", [
                exe, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                "--dashboard-address", f"127.0.0.1:{dash}"],
                url=f"http://127.0.0.1:{dash}")
            self.wait_http(scheduler, "/status")
            self.spawn("dask-workers", [exe, "worker", address, "--nworkers", str(workers),
                                        "--nthreads", "1", "--no-dashboard"],
                       env=self.env | worker_env(self.settings))
        self.env["SURGFLOW_DASK_ADDRESS"] = address
        self.state["dask_address"] = address
        self.save()
        return address

    def start_mlflow_ui(self, port: int | None = None, wait: bool = True) -> Service:
        port = port or free_port()
        ui = self.spawn("mlflow-ui", surgflow_cmd("mlflow", "ui", "--port", str(port)),
                        url=f"http://127.0.0.1:{port}")
        if wait:
            self.wait_http(ui)
        return ui

    def start_service(self, port: int | None = None, consume: bool = True,
                      wait: bool = True) -> Service:
        port = port or free_port()
        auth = [] if self.env.get("SURGFLOW_API_TOKEN") else ["--insecure-local"]
        svc = self.spawn("inference-service", surgflow_cmd(
            "serve", "--host", "127.0.0.1", "--port", str(port),
            *(["--consume"] if consume else []), *auth), url=f"http://127.0.0.1:{port}")
        if wait:
            self.wait_http(svc, "/healthz")
        return svc

    def start_label_studio(self) -> Future | None:
        """Start the embedded Label Studio in the background; :meth:`wait_label_studio` waits
        for it (and raises what stopped it). None if one is configured."""
        if self.settings.label_studio_url:
            return None
        from surgflow.annotation import server

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-studio-start")
        started = pool.submit(server.start, self.home)
        pool.shutdown(wait=False)
        return started

    def wait_label_studio(self, started: Future | None) -> None:
        if started is not None:
            started.result()

    def start_annotation_bridge(self, port: int | None = None) -> Service:
        """The annotation bridge; every process started after it knows its URL."""
        port = port or free_port()
        url = self.settings.annotation_url or f"http://127.0.0.1:{port}"
        bridge = self.spawn("annotation-bridge", surgflow_cmd(
            "annotate", "serve", "--host", "127.0.0.1", "--port", str(port)),
            url=f"http://127.0.0.1:{port}")
        self.env["SURGFLOW_ANNOTATION_URL"] = url
        return bridge

    def start_feedback_follow(self) -> Service:
        return self.spawn("feedback-follow", surgflow_cmd("feedback", "run"))

    def start_deployments(self, recipes_dir: Path) -> Service:
        return self.spawn("deployments", surgflow_cmd(
            "deployments", "serve", "--recipes", str(recipes_dir)))

    def get(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def urls(self) -> dict[str, Any]:
        from surgflow.cli.local.prefect_server import ui_url

        def url(name: str, suffix: str = "") -> str | None:
            s = self.get(name)
            return f"{s.url}{suffix}" if s and s.url else None

        from surgflow.annotation import server

        ls = None
        with contextlib.suppress(SurgflowError):  # none runs: nothing to show
            ls = server.endpoint(self.settings, start_embedded=False)
        return {"prefect_ui": ui_url(self.state["prefect_api_url"]),
                "dask_dashboard": url("dask-scheduler", "/status"),
                "mlflow_ui": url("mlflow-ui"), "inference_service": url("inference-service"),
                "label_studio": ls.url if ls else None,
                "label_studio_login": f"{ls.login} / {ls.password}" if ls and ls.login
                else None,
                "annotation_bridge": url("annotation-bridge"),
                "kafka_bootstrap": self.state["bootstrap"], "logs": str(self.logs)}


def up(recipes_dir: Path, *, workers: int = 2, settings: Settings | None = None,
       serve_port: int | None = None, mlflow_port: int | None = None) -> dict[str, Any]:
    """Start the whole stack (see the module docstring); returns its URLs and services."""
    from surgflow_flows.deployments import trigger_names

    stack = Stack(settings)
    with locked(stack.home / "stack.lock"):
        stack.check_not_running()
        try:
            stack.start_core()
            label_studio = stack.start_label_studio()
            stack.start_dask(workers)
            # everything starts at once; then wait for those that answer HTTP
            ui = stack.start_mlflow_ui(mlflow_port, wait=False)
            svc = stack.start_service(serve_port, wait=False)
            bridge = stack.start_annotation_bridge()
            stack.start_feedback_follow()
            deployments = stack.start_deployments(recipes_dir)
            stack.wait_http(ui)
            stack.wait_http(svc, "/healthz")
            stack.wait_http(bridge, "/healthz")
            stack.wait_triggers(deployments, trigger_names(recipes_dir))
            stack.wait_label_studio(label_studio)
        except BaseException:
            down(stack.home)
            raise
    return stack.urls() | {"services": [asdict(s) for s in stack.services]}


def down(home: Path | None = None, timeout_s: float = 20.0) -> dict[str, Any]:
    """Stop what ``up`` started (and a Prefect server ``surgflow train`` left running)."""
    from surgflow.cli.local.prefect_server import running_server, stop_server
    from surgflow.feedback import broker

    home = Path(home or get_settings().home)
    state = recorded(home) or {}
    stopped = []
    for s in reversed(state.get("services", [])):
        # a recorded pid that now belongs to another program is left alone
        program = "dask" if s["name"].startswith("dask") else "surgflow"
        if terminate(s["pid"], timeout_s, program=program, group=True):
            stopped.append(s["name"])
    if state.get("started_broker") and broker.stop(home) is not None:
        stopped.append("broker")
    # the embedded Label Studio is this home's, whoever started it (`up`, the demo, a sync)
    from surgflow.annotation import server

    if server.stop(home) is not None:
        stopped.append("label-studio")
    if state.get("started_prefect", True) and running_server(home) and stop_server(home):
        stopped.append("prefect-server")
    _state_path(home).unlink(missing_ok=True)
    return {"stopped": stopped}
