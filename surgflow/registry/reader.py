"""Reading the MLflow model registry without importing MLflow.

Importing MLflow's client costs a command seconds, and most registry commands only read: which
versions exist, their tags, their artifact location and where the aliases point. A
:class:`Reader` answers exactly that, from the embedded SQLite store (read-only, with the
standard library's ``sqlite3``) or from a tracking server's REST API (``httpx``). Any other
tracking URI falls back to MLflow's own client. Writes always go through MLflow's client
(:mod:`surgflow.registry.store`).

The SQLite reader reads MLflow's own tables (``registered_models``, ``model_versions``,
``model_version_tags``, ``registered_model_aliases``) of the pinned MLflow release;
``tests/test_registry_reader.py`` compares every answer with MLflow's client on the same store,
so a schema change in an MLflow upgrade fails there and not in production.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from surgflow.errors import TrackingError

# MLflow marks a deleted version with this stage instead of removing its row
DELETED_STAGE = "Deleted_Internal"
DEFAULT_WORKSPACE = "default"
PAGE = 1000


@dataclass(frozen=True)
class VersionRecord:
    """What surgflow reads of one MLflow model version (the attributes
    :func:`surgflow.registry.model.from_mlflow` uses, named as MLflow names them)."""

    name: str
    version: int
    creation_timestamp: int
    run_id: str | None
    source: str | None
    tags: dict[str, str] = field(default_factory=dict)


class Reader(Protocol):
    def names(self) -> list[str]: ...

    def exists(self, name: str) -> bool: ...

    def versions(self, name: str) -> list[VersionRecord]: ...

    def aliases(self, name: str) -> dict[str, int]: ...


def reader_for(uri: str) -> Reader:
    """The reader for tracking URI ``uri``."""
    if uri.startswith("sqlite:///"):
        return SqliteReader(Path(uri.removeprefix("sqlite:///")))
    if uri.startswith(("http://", "https://")):
        return RestReader(uri)
    return ClientReader(uri)


class SqliteReader:
    """MLflow's SQLite store, opened read-only; a store not created yet holds no model."""

    def __init__(self, db: Path):
        self.db = Path(db)

    def _rows(self, sql: str, *args: Any) -> list[tuple]:
        if not self.db.is_file():
            return []
        con = sqlite3.connect(f"{self.db.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # MLflow has not run its migrations here yet
                return []
            raise TrackingError(f"reading the MLflow store {self.db}: {e}") from e
        finally:
            con.close()

    def names(self) -> list[str]:
        return [r[0] for r in self._rows(
            "SELECT name FROM registered_models WHERE workspace = ? ORDER BY name",
            DEFAULT_WORKSPACE)]

    def exists(self, name: str) -> bool:
        return bool(self._rows(
            "SELECT 1 FROM registered_models WHERE workspace = ? AND name = ?",
            DEFAULT_WORKSPACE, name))

    def versions(self, name: str) -> list[VersionRecord]:
        tags: dict[int, dict[str, str]] = {}
        for version, key, value in self._rows(
                "SELECT version, key, value FROM model_version_tags "
                "WHERE workspace = ? AND name = ?", DEFAULT_WORKSPACE, name):
            tags.setdefault(int(version), {})[key] = value
        return [VersionRecord(name=name, version=int(v), creation_timestamp=int(t or 0),
                              run_id=run_id or None, source=source,
                              tags=tags.get(int(v), {}))
                for v, t, run_id, source in self._rows(
                    "SELECT version, creation_time, run_id, source FROM model_versions "
                    "WHERE workspace = ? AND name = ? AND current_stage != ? ORDER BY version",
                    DEFAULT_WORKSPACE, name, DELETED_STAGE)]

    def aliases(self, name: str) -> dict[str, int]:
        return {alias: int(v) for alias, v in self._rows(
            "SELECT alias, version FROM registered_model_aliases "
            "WHERE workspace = ? AND name = ?", DEFAULT_WORKSPACE, name)}


class RestReader:
    """A tracking server's REST API (``/api/2.0/mlflow/…``), with the credentials MLflow's
    client would send (``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")

    def _get(self, path: str, **params: Any) -> dict | None:
        import httpx

        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        auth = (user, password or "") if user else None
        verify = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
        timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 30)
        url = f"{self.uri}/api/2.0/mlflow/{path}"
        try:
            r = httpx.get(url, params=params, headers=headers, auth=auth, verify=verify,
                          timeout=timeout)
        except httpx.HTTPError as e:
            raise TrackingError(f"MLFLOW_TRACKING_URI: no MLflow tracking server answers at "
                                f"{self.uri}: {e}") from e
        if r.status_code == 404 and "RESOURCE_DOES_NOT_EXIST" in r.text:
            return None
        if r.status_code in (401, 403):
            raise TrackingError(f"MLflow at {self.uri} refused {path} ({r.status_code}); check "
                                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
        if r.status_code != 200:
            raise TrackingError(f"MLflow at {self.uri}: GET {path} answered {r.status_code}: "
                                f"{' '.join(r.text.split())[:200]}")
        return r.json()

    def _pages(self, path: str, key: str, **params: Any) -> list[dict]:
        out: list[dict] = []
        token = None
        while True:
            page = self._get(path, max_results=PAGE, **params,
                             **({"page_token": token} if token else {})) or {}
            out.extend(page.get(key, []))
            token = page.get("next_page_token")
            if not token:
                return out

    def names(self) -> list[str]:
        return sorted(m["name"] for m in
                      self._pages("registered-models/search", "registered_models"))

    def exists(self, name: str) -> bool:
        return self._get("registered-models/get", name=name) is not None

    def versions(self, name: str) -> list[VersionRecord]:
        found = self._pages("model-versions/search", "model_versions",
                            filter=f"name='{name}'")
        return sorted((VersionRecord(
            name=mv["name"], version=int(mv["version"]),
            creation_timestamp=int(mv.get("creation_timestamp") or 0),
            run_id=mv.get("run_id") or None, source=mv.get("source"),
            tags={t["key"]: t.get("value") for t in mv.get("tags", [])}) for mv in found),
            key=lambda v: v.version)

    def aliases(self, name: str) -> dict[str, int]:
        got = self._get("registered-models/get", name=name)
        model = (got or {}).get("registered_model", {})
        return {a["alias"]: int(a["version"]) for a in model.get("aliases", [])}


class ClientReader:
    """MLflow's own client, for tracking URIs the light readers do not speak."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def _model(self, name: str) -> Any | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def names(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models(max_results=PAGE))

    def exists(self, name: str) -> bool:
        return self._model(name) is not None

    def versions(self, name: str) -> list[VersionRecord]:
        found = self.client.search_model_versions(f"name='{name}'")
        return sorted((VersionRecord(name=mv.name, version=int(mv.version),
                                     creation_timestamp=int(mv.creation_timestamp or 0),
                                     run_id=mv.run_id or None, source=mv.source,
                                     tags=dict(mv.tags or {})) for mv in found),
                      key=lambda v: v.version)

    def aliases(self, name: str) -> dict[str, int]:
        model = self._model(name)
        return {a: int(v) for a, v in (model.aliases if model else {}).items()}
