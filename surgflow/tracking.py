"""Where experiment tracking and the model registry live: MLflow.

Embedded default: a SQLite backend store at ``SURGFLOW_HOME/mlflow/mlflow.db`` and a local
artifact root at ``SURGFLOW_HOME/mlflow/artifacts``, no server needed. ``MLFLOW_TRACKING_URI``
points at a tracking server instead (its own artifact store then applies).

Nothing happens at import; :func:`client` creates the store on first use. MLflow creates a new
SQLite store by running its schema migrations, which two processes must not do at once, so the
first connection is made under a lock.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from surgflow.config import Settings, get_settings
from surgflow.errors import TrackingError
from surgflow.storage import locked

if TYPE_CHECKING:
    from mlflow import MlflowClient


def tracking_uri(settings: Settings | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded SQLite store under SURGFLOW_HOME."""
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured:
        return configured
    settings = settings or get_settings()
    return f"sqlite:///{store_dir(settings) / 'mlflow.db'}"


def store_dir(settings: Settings) -> Path:
    return settings.home / "mlflow"


def artifact_root(settings: Settings) -> str | None:
    """The artifact location new experiments get (None: the tracking server decides)."""
    if os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        return None
    return (store_dir(settings) / "artifacts").as_uri()


def client(settings: Settings | None = None) -> MlflowClient:
    """An MLflow client on the configured store (tracking and registry on the same URI)."""
    from mlflow import MlflowClient

    settings = settings or get_settings()
    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with locked(db.parent / "init.lock"):
            # a new store announces its schema migrations at INFO on stderr: not news to a user
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
            c = MlflowClient(tracking_uri=uri, registry_uri=uri)
            c.search_experiments(max_results=1)  # runs the migrations of a new store, once
        return c
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        _probe(uri)
        c.search_experiments(max_results=1)
    except Exception as e:
        raise TrackingError(f"MLFLOW_TRACKING_URI: no MLflow tracking server answers at {uri}: "
                            f"{' '.join(str(e).split())[:200]}") from e
    return c


PROBE_TIMEOUT_S = 5.0


def _probe(uri: str) -> None:
    """Fail in seconds when nothing answers at an HTTP tracking URI.

    MLflow's own requests retry a refused connection with exponential backoff
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7: minutes); one request without retries
    first tells an unreachable server apart at once. Any HTTP answer counts as reachable.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    timeout = min(PROBE_TIMEOUT_S, float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 120))
    requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)


def experiment_id(c: MlflowClient, name: str, settings: Settings | None = None) -> str:
    """The id of experiment ``name``, created (with the local artifact root) if missing."""
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = artifact_root(settings or get_settings())
    location = f"{root}/{name}" if root else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:
        # another process created it between the lookup and the create
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
