"""Every training run is an MLflow run: its recipe, data, code, metrics and utilisation.

The driver opens the MLflow run (:func:`open_run`) in experiment ``surgflow/<procedure>``: the
recipe flattened into params, the recipe file as an artifact, the pinned dataset versions and the
code version as tags. While the group trains, rank 0 logs each finished epoch of each stage
(``clip/train_loss``, ``clip/val_macro_f1``, ``temporal/train_samples_per_s``, ``clip/lr`` …,
step = epoch) and every rank logs its utilisation samples (``util/rank0/cpu_percent`` …) with
the time each was taken, so metrics and machine load share MLflow's time axis. Ranks buffer
what they log and send it with ``log_batch`` every few seconds (:class:`LiveLog`); the run ends
``FINISHED`` or ``FAILED`` (:func:`close_run`).

Metrics live only here: :func:`epochs` and :func:`utilisation` read them back for
``surgflow runs show``, the run plot and the flow's artifacts. The embedded SQLite store answers
"database is locked" when several ranks write at once; writes are retried.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
UTIL_FIELDS = ("cpu_percent", "rss_mb", "loader_wait_s", "gpu_util_percent", "gpu_mem_mb")
_MAX_METRICS, _MAX_PARAMS = 1000, 100  # MLflow's log_batch limits
_PARAM_LEN = 6000
_EPOCH_KEY = re.compile(r"^(?P<stage>[a-z0-9_]+)/(?P<name>[a-z0-9_]+)$")
_UTIL_KEY = re.compile(r"^util/rank(?P<rank>\d+)/(?P<name>[a-z_]+)$")


def experiment_name(procedure: str) -> str:
    return f"surgflow/{procedure}"


def _transient(e: BaseException) -> bool:
    text = str(e).lower()
    return "database is locked" in text or "database table is locked" in text


# Several ranks and the driver share one SQLite file; a writer that finds it locked waits and
# tries again instead of failing the rank.
_retry = retry(retry=retry_if_exception(_transient), wait=wait_random_exponential(0.05, 2.0),
               stop=stop_after_delay(60), reraise=True)


@_retry
def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` (an MlflowClient method), retried while the store is locked."""
    return fn(*args, **kwargs)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """A nested mapping as ``{"a.b.c": "value"}`` params (lists and None as JSON text)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    text = data if isinstance(data, str) else json.dumps(data)
    out[prefix] = text[:_PARAM_LEN]
    return out


def epoch_metrics(stage: str, epoch: int, metrics: dict[str, Any]) -> list[Metric]:
    """One finished epoch as MLflow metrics at step ``epoch``, timestamped when it finished."""
    from mlflow.entities import Metric

    ts = int(_epoch_time(metrics) * 1000)
    values: dict[str, float] = {"epoch": float(epoch), "lr": float(metrics["lr"])}
    for split in SPLITS:
        for name, v in (metrics.get(split) or {}).items():
            values[f"{split}_{name}"] = float(v)
    if "first_step_at" in metrics:
        values["first_step_at"] = float(metrics["first_step_at"])
    return [Metric(f"{stage}/{k}", v, ts, epoch) for k, v in values.items()]


def named_metrics(prefix: str, values: dict[str, Any], step: int = 0) -> list[Metric]:
    """Numbers of ``values`` as metrics ``<prefix>_<name>``, logged now."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    return [Metric(f"{prefix}_{k}", float(v), ts, step) for k, v in values.items()
            if isinstance(v, (int, float))]


def _epoch_time(metrics: dict[str, Any]) -> float:
    at = metrics.get("finished_at")
    if not at:
        return time.time()
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def sample_metrics(sample: dict[str, Any], step: int) -> list[Metric]:
    """One utilisation sample of one rank as metrics at the time it was taken."""
    from mlflow.entities import Metric

    ts, rank = int(sample["t"] * 1000), int(sample["rank"])
    return [Metric(f"util/rank{rank}/{k}", float(sample[k]), ts, step)
            for k in UTIL_FIELDS if sample.get(k) is not None]


def open_run(client: MlflowClient, *, procedure: str, run_id: str, recipe: dict[str, Any],
             recipe_file: Path | None, run_dir: Path, dataset_versions: Sequence[str],
             code_version: str, settings: Any = None,
             extra_tags: Mapping[str, str] | None = None) -> str:
    """Create the MLflow run of training run ``run_id``; returns the MLflow run id.
    ``extra_tags`` join its own (``mlflow.parentRunId`` nests it under a parent run)."""
    from mlflow.entities import Param, RunTag

    from surgflow import tracking

    exp = tracking.experiment_id(client, experiment_name(procedure), settings)
    tags = {"surgflow.run_id": run_id, "surgflow.recipe": recipe["name"],
            "surgflow.procedure": procedure, "surgflow.code_version": code_version,
            "surgflow.dataset_versions": ",".join(dataset_versions)}
    tags |= {f"surgflow.dataset.{i}": v for i, v in enumerate(dataset_versions)}
    tags |= dict(extra_tags or {})
    run = call(client.create_run, exp, tags=tags, run_name=run_id)
    mlflow_id = run.info.run_id
    params = [Param(k, v) for k, v in sorted(flatten(recipe).items())]
    for i in range(0, len(params), _MAX_PARAMS):
        call(client.log_batch, mlflow_id, params=params[i : i + _MAX_PARAMS],
              tags=[RunTag("surgflow.params_batch", str(i // _MAX_PARAMS))])
    # the file the researcher wrote, and the recipe as trained (sources pinned to dataset@N)
    if recipe_file is not None and Path(recipe_file).is_file():
        call(client.log_artifact, mlflow_id, str(recipe_file), "recipe")
    call(client.log_artifact, mlflow_id, str(Path(run_dir) / "recipe.json"), "recipe")
    return mlflow_id


def reopen_run(client: MlflowClient, mlflow_run_id: str) -> None:
    """Mark a run that is being resumed as running again."""
    call(client.update_run, mlflow_run_id, status="RUNNING")


def close_run(client: MlflowClient, mlflow_run_id: str, *, failed: bool) -> None:
    call(client.set_terminated, mlflow_run_id, "FAILED" if failed else "FINISHED")


def send(client: MlflowClient, mlflow_run_id: str, metrics: Sequence[Metric]) -> None:
    """Log ``metrics`` in batches MLflow accepts, retrying while the store is locked."""
    for i in range(0, len(metrics), _MAX_METRICS):
        call(client.log_batch, mlflow_run_id, metrics=list(metrics[i : i + _MAX_METRICS]))


class LiveLog:
    """A rank's buffer of metrics, sent to its MLflow run every ``interval_s`` seconds by a
    daemon thread, and at once by :meth:`flush`. A failed send is logged and kept for the next
    one: losing the tracking store for a moment must not kill a training rank."""

    def __init__(self, client: MlflowClient, mlflow_run_id: str, interval_s: float = 2.0):
        self.client, self.run_id, self.interval_s = client, mlflow_run_id, interval_s
        self._pending: list[Metric] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._steps: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, name="mlflow-live-log", daemon=True)

    def start(self) -> LiveLog:
        self._thread.start()
        return self

    def add(self, metrics: Iterable[Metric]) -> None:
        with self._lock:
            self._pending.extend(metrics)

    def add_sample(self, sample: dict[str, Any]) -> None:
        """A utilisation sample; its step counts the rank's samples."""
        rank = int(sample["rank"])
        with self._lock:
            step = self._steps.get(rank, 0)
            self._steps[rank] = step + 1
        self.add(sample_metrics(sample, step))

    def flush(self) -> None:
        with self._send_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                send(self.client, self.run_id, batch)
            except Exception as e:
                log.warning("MLflow run %s: could not log %d metrics (kept for the next try): %s",
                            self.run_id, len(batch), e)
                with self._lock:
                    self._pending = batch + self._pending

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()


def _history(client: MlflowClient, mlflow_run_id: str, key: str) -> list[Metric]:
    return call(client.get_metric_history, mlflow_run_id, key)


def _latest_by_step(history: list[Metric]) -> dict[int, Metric]:
    """A re-run epoch (after a restart) is logged again at the same step: the last one counts."""
    out: dict[int, Metric] = {}
    for m in sorted(history, key=lambda m: m.timestamp):
        out[m.step] = m
    return out


def epoch_count(client: MlflowClient, mlflow_run_id: str) -> int:
    """Epochs finished so far over all stages (one cheap query)."""
    metrics = call(client.get_run, mlflow_run_id).data.metrics
    return sum(int(v) for k, v in metrics.items() if k.endswith("/epoch") and "/" in k
               and not k.startswith("util/"))


def epochs(client: MlflowClient, mlflow_run_id: str) -> list[dict[str, Any]]:
    """Every finished epoch of every stage, rebuilt from the run's metrics, in time order:
    ``{"stage", "epoch", "train": {...}, "val": {...}, "lr", "finished_at"[, "first_step_at"]}``."""
    keys = [k for k in call(client.get_run, mlflow_run_id).data.metrics
            if not k.startswith("util/") and _EPOCH_KEY.match(k)]
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for key in keys:
        m = _EPOCH_KEY.match(key)
        assert m is not None
        stage, name = m["stage"], m["name"]
        split, _, field = name.partition("_")
        if not ((split in SPLITS and field) or name in ("epoch", "lr", "first_step_at")):
            continue  # a stage-level figure (e.g. temporal/encoder_val_*), not an epoch's
        for step, metric in _latest_by_step(_history(client, mlflow_run_id, key)).items():
            row = rows.setdefault((stage, step), {"stage": stage, "epoch": step, "train": {},
                                                  "val": {}})
            if split in SPLITS and field:
                value: Any = metric.value
                if field == "samples":
                    value = int(value)
                row[split][field] = value
            elif name in ("lr", "first_step_at"):
                row[name] = metric.value
            if name == "epoch":
                row["finished_at"] = datetime.fromtimestamp(metric.timestamp / 1000, UTC) \
                    .isoformat(timespec="milliseconds").replace("+00:00", "Z")
    # an epoch whose batch landed between two of the reads above is not whole yet: left out
    whole = [r for r in rows.values() if "finished_at" in r and r["train"] and r["val"]]
    return sorted(whole, key=lambda r: (r["finished_at"], r["stage"], r["epoch"]))


def utilisation(client: MlflowClient, mlflow_run_id: str) -> list[dict[str, Any]]:
    """Every rank's utilisation samples: ``{"t", "rank", "cpu_percent", ...}``, in time order."""
    keys = [k for k in call(client.get_run, mlflow_run_id).data.metrics if _UTIL_KEY.match(k)]
    samples: dict[tuple[int, int], dict[str, Any]] = {}
    for key in keys:
        m = _UTIL_KEY.match(key)
        assert m is not None
        rank = int(m["rank"])
        for metric in _history(client, mlflow_run_id, key):
            s = samples.setdefault((rank, metric.timestamp), {
                "t": metric.timestamp / 1000, "rank": rank,
                **{f: None for f in UTIL_FIELDS}})
            s[m["name"]] = metric.value
    return sorted(samples.values(), key=lambda s: (s["t"], s["rank"]))
