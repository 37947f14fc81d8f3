"""The registry's light readers answer exactly what MLflow's client answers, on the embedded
SQLite store and on a tracking server run with MLflow's basic-auth app (as compose.yaml runs
it), where a user other than surgflow is read-only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from surgflow import tracking
from surgflow.errors import TrackingError
from surgflow.processes import free_port
from surgflow.registry import ModelRegistry
from surgflow.registry.reader import ClientReader, RestReader, SqliteReader
from tests.test_model_registry import NAME, make_seal, register_version

pytestmark = pytest.mark.integration

ADMIN, ADMIN_PASSWORD = "surgflow", "admin-password-1"


def answers(reader) -> dict:
    return {"names": reader.names(), "exists": [reader.exists(NAME), reader.exists("nope")],
            "versions": reader.versions(NAME), "aliases": reader.aliases(NAME),
            "none": [reader.versions("nope"), reader.aliases("nope")]}


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_chain_bundle) -> ModelRegistry:
    from surgflow.config import get_settings

    home = tmp_path_factory.mktemp("reader") / "home"
    reg = ModelRegistry(get_settings(home=home))
    for _ in range(3):
        register_version(reg, tiny_chain_bundle.bundle_dir)
    reg.put_seal(NAME, 2, make_seal(2))
    reg.promote(NAME, 2, by="test")
    return reg


def test_the_sqlite_reader_answers_what_mlflows_client_answers(store):
    uri = tracking.tracking_uri(store.settings)
    light = answers(SqliteReader(Path(uri.removeprefix("sqlite:///"))))
    assert light == answers(ClientReader(uri))
    assert [v.version for v in light["versions"]] == [1, 2, 3]
    assert light["aliases"] == {"candidate": 3, "production": 2}
    assert all(v.tags and v.source.startswith("file://") for v in light["versions"])


def test_a_store_not_created_yet_holds_no_model(tmp_path):
    reader = SqliteReader(tmp_path / "mlflow.db")
    assert reader.names() == [] and not reader.exists(NAME) and reader.versions(NAME) == []
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture(scope="module")
def auth_server(store, tmp_path_factory):
    """`mlflow server --app-name basic-auth` on the store, every new user READ by default."""
    d = tmp_path_factory.mktemp("auth")
    ini = d / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{d / 'auth.db'}\nadmin_username = {ADMIN}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
           "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
    uri = tracking.tracking_uri(store.settings)
    with open(d / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
             "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (d / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_rest_reader_answers_what_mlflows_client_answers(store, auth_server,
                                                              monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    rest = answers(RestReader(auth_server))
    assert rest == answers(ClientReader(auth_server))
    assert rest == answers(SqliteReader(Path(tracking.tracking_uri(
        store.settings).removeprefix("sqlite:///"))))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_USERNAME"):
        RestReader(auth_server).names()


def test_a_researcher_on_the_basic_auth_server_reads_but_cannot_move_an_alias(
        store, auth_server, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    r = httpx.post(f"{auth_server}/api/2.0/mlflow/users/create", auth=(ADMIN, ADMIN_PASSWORD),
                   json={"username": "researcher", "password": "researcher-password-1"})
    assert r.status_code == 200, r.text
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "researcher")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "researcher-password-1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert RestReader(auth_server).aliases(NAME)["production"] == 2
    researcher = MlflowClient(tracking_uri=auth_server, registry_uri=auth_server)
    with pytest.raises(MlflowException, match=r"(?i)permission"):
        researcher.set_registered_model_alias(NAME, "production", "1")
    assert store.alias_drift(NAME) == []
