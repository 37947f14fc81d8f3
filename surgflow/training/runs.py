"""Run records under ``SURGFLOW_HOME/runs/<run_id>``.

A run record keeps what launching and resuming need, each file with a single writer so that no
two processes race on a file:

- ``run.json`` — the driver: recipe, parameters, status, attempts, result, ``mlflow_run_id``
  (the MLflow run that holds the run's metrics and utilisation) and ``reuse`` (stages taken
  from the production chain: stage name → bundle directory);
- ``recipe.json`` — the driver: the recipe with its sources pinned to ``dataset@N``;
- ``checkpoints/<stage>/epoch-NNNN.pt`` — rank 0 (see :mod:`surgflow.training.checkpoints`);
  each checkpoint keeps its epoch's metrics, which is all a resumed stage needs of them.

Per-epoch metrics and utilisation live in MLflow only (:mod:`surgflow.training.mlflow_run`);
:meth:`RunStore.epochs`, :meth:`RunStore.utilisation` and :meth:`RunStore.show` read them there.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from surgflow.errors import NotFound
from surgflow.storage import json_bytes, write_atomic, write_exclusive

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RunStore:
    """Create, update and read run records."""

    def __init__(self, home: Path):
        self.root = Path(home) / "runs"

    def dir(self, run_id: str) -> Path:
        if not _RUN_ID.match(run_id):
            raise NotFound(f"run {run_id!r}: not a valid run id")
        return self.root / run_id

    def create(self, recipe_name: str, record: dict[str, Any]) -> str:
        """A new run for ``recipe_name``; returns its id."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        while True:
            run_id = f"{recipe_name}-{stamp}-{secrets.token_hex(2)}"
            body = {"run_id": run_id, "created_at": now_iso(), "status": "created",
                    "attempts": [], **record}
            if write_exclusive(self.root / run_id / "run.json", json_bytes(body)):
                return run_id

    def get(self, run_id: str) -> dict[str, Any]:
        path = self.dir(run_id) / "run.json"
        if not path.is_file():
            raise NotFound(f"run {run_id!r} does not exist under {self.root}")
        return json.loads(path.read_text())

    def update(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``run.json`` (driver only)."""
        record = self.get(run_id) | fields | {"updated_at": now_iso()}
        write_atomic(self.dir(run_id) / "run.json", json_bytes(record))
        return record

    def _mlflow(self, run_id: str) -> tuple[Any, str | None]:
        from surgflow import tracking
        from surgflow.config import get_settings

        mlflow_id = self.get(run_id).get("mlflow_run_id")
        if mlflow_id is None:
            return None, None
        return tracking.client(get_settings(home=self.root.parent)), mlflow_id

    def epoch_count(self, run_id: str) -> int:
        """How many epochs the run has finished so far (one query to MLflow)."""
        from surgflow.training import mlflow_run

        client, mlflow_id = self._mlflow(run_id)
        return mlflow_run.epoch_count(client, mlflow_id) if mlflow_id else 0

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        """The run's finished epochs of every stage, as its MLflow run holds them."""
        from surgflow.training import mlflow_run

        client, mlflow_id = self._mlflow(run_id)
        return mlflow_run.epochs(client, mlflow_id) if mlflow_id else []

    def utilisation(self, run_id: str) -> list[dict[str, Any]]:
        """Every rank's utilisation samples, as its MLflow run holds them."""
        from surgflow.training import mlflow_run

        client, mlflow_id = self._mlflow(run_id)
        return mlflow_run.utilisation(client, mlflow_id) if mlflow_id else []

    def show(self, run_id: str) -> dict[str, Any]:
        """The run record with its epochs and a per-rank utilisation summary."""
        record = self.get(run_id)
        samples = self.utilisation(run_id)
        epochs = self.epochs(run_id)
        return record | {
            "epochs": epochs,
            "launch_s": _launch_times(record.get("attempts", []), epochs),
            "utilisation": {"samples": len(samples), "per_rank": _summarise(samples)},
        }

    def list(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if (p / "run.json").is_file():
                r = json.loads((p / "run.json").read_text())
                out.append({k: r.get(k) for k in
                            ("run_id", "recipe_name", "status", "created_at", "updated_at")})
        return sorted(out, key=lambda r: r["created_at"] or "")


def _launch_times(attempts: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> list:
    """Seconds from each attempt's launch to rank 0's first optimiser step in it."""
    firsts = sorted(e["first_step_at"] for e in epochs if "first_step_at" in e)
    out = []
    for a in attempts:
        end = a.get("ended") or float("inf")
        inside = [t for t in firsts if a["started"] <= t <= end]
        out.append(round(inside[0] - a["started"], 3) if inside else None)
    return out


def _summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for s in samples:
        by_rank.setdefault(int(s["rank"]), []).append(s)
    out = {}
    for rank, rows in sorted(by_rank.items()):
        gpu = [r["gpu_util_percent"] for r in rows if r.get("gpu_util_percent") is not None]
        out[str(rank)] = {
            "samples": len(rows),
            "cpu_percent_mean": sum(r["cpu_percent"] for r in rows) / len(rows),
            "rss_mb_max": max(r["rss_mb"] for r in rows),
            "loader_wait_s_total": sum(r["loader_wait_s"] for r in rows),
            "gpu_util_percent_mean": sum(gpu) / len(gpu) if gpu else None,
            "gpu_mem_mb_max": max((r["gpu_mem_mb"] or 0) for r in rows) if gpu else None,
        }
    return out
