"""`surgflow up` starts the local stack; `surgflow down` leaves no process of it behind."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.cli_helpers import CliRun, run_cli
from tests.process_helpers import processes_of


@pytest.mark.integration
def test_up_starts_every_service_and_down_stops_them_all(tmp_path: Path,
                                                        label_studio_server) -> None:
    home = tmp_path / "home"
    # an existing Label Studio (the session's): `up` uses it and never stops it. The stack's
    # own embedded start is what the demo's end-to-end test runs.
    existing = {"SURGFLOW_LABEL_STUDIO_URL": label_studio_server.url,
                "SURGFLOW_LABEL_STUDIO_TOKEN": label_studio_server.token}

    def surgflow(*args: str, timeout: float = 600) -> CliRun:
        return run_cli(*args, home=home, clean=True, check=False, cwd=tmp_path,
                       timeout=timeout, env=existing)

    try:
        up = surgflow("up", "--json")
        assert up.returncode == 0, up.stderr[-2000:]
        urls = json.loads(up.stdout)
        assert {s["name"] for s in urls["services"]} == {
            "dask-scheduler", "dask-workers", "mlflow-ui", "inference-service",
            "annotation-bridge", "feedback-follow", "deployments"}
        assert httpx.get(f"{urls['inference_service']}/healthz", timeout=10).json() == {
            "status": "ok"}
        assert httpx.get(urls["mlflow_ui"], timeout=10).status_code == 200
        assert httpx.get(urls["dask_dashboard"], timeout=10).status_code == 200
        # the configured Label Studio is the one shown (its login is not surgflow's to print)
        assert urls["label_studio"] == label_studio_server.url
        assert urls["label_studio_login"] is None
        assert httpx.get(f"{urls['annotation_bridge']}/healthz", timeout=10).status_code == 200
        page = httpx.get(f"{urls['prefect_ui']}/deployments", headers={"accept": "text/html"},
                         timeout=10)
        assert page.status_code == 200
        again = surgflow("up", "--json")
        assert again.returncode == 2 and "already running" in again.stderr
        # the served deployments register themselves with the server
        from prefect.client.orchestration import SyncPrefectClient

        deadline = time.monotonic() + 240
        names: set[str] = set()
        with SyncPrefectClient(f"{urls['prefect_ui']}/api") as client:
            while time.monotonic() < deadline and "nightly" not in names:
                names = {d.name for d in client.read_deployments()}
                time.sleep(2)
        assert {"nightly", "triggers", "annotation-sync", "recipe-cholec-tiny"} <= names
        assert processes_of(home), "the stack's processes carry its SURGFLOW_HOME"
    finally:
        down = surgflow("down", "--json", timeout=180)
    assert down.returncode == 0, down.stderr
    stopped = set(json.loads(down.stdout)["stopped"])
    assert {"deployments", "inference-service", "mlflow-ui", "annotation-bridge", "broker",
            "prefect-server"} <= stopped
    assert "label-studio" not in stopped  # configured from outside: never stopped
    assert httpx.get(f"{label_studio_server.url}/health", timeout=10).status_code == 200
    deadline = time.monotonic() + 30
    while processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [(p.pid, " ".join(p.cmdline())[:120]) for p in processes_of(home)]
    assert left == [], left
    assert json.loads(surgflow("down", "--json").stdout) == {"stopped": []}
