"""A sweep's MLflow run: the parent of every trial's training run.

It lives in the procedure's experiment (``surgflow/<procedure>``) next to the training runs,
named ``sweep-<study>``; each trial's run names it in its ``mlflow.parentRunId`` tag, so the
MLflow UI nests the trials under it. It holds the sweep section as params, each finished
trial's value as the metric ``trial_<metric>`` (step = trial number) and, at the end, the best
trial as tags and ``best_<metric>``. A resumed sweep reopens the same run (its id is kept in the
study's user attributes, the one place the study and MLflow meet).
"""

from __future__ import annotations

import logging
from typing import Any

from surgflow.training import mlflow_run

log = logging.getLogger(__name__)

STUDY_ATTR = "mlflow_parent_run_id"
PARENT_TAG = "mlflow.parentRunId"


def open_parent(client: Any, study: Any, *, procedure: str, recipe_name: str,
                sweep: dict[str, Any], settings: Any) -> str:
    """The MLflow run of ``study``: reopened when the study names one that exists, else new."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    from surgflow import tracking

    known = study.user_attrs.get(STUDY_ATTR)
    if known:
        try:
            mlflow_run.call(client.get_run, known)
            mlflow_run.reopen_run(client, known)
            return str(known)
        except MlflowException:
            log.warning("sweep %s: its MLflow run %s is gone; starting a new one",
                        study.study_name, known)
    exp = tracking.experiment_id(client, mlflow_run.experiment_name(procedure), settings)
    run = mlflow_run.call(client.create_run, exp, run_name=f"sweep-{study.study_name}", tags={
        "surgflow.sweep": study.study_name, "surgflow.recipe": recipe_name,
        "surgflow.procedure": procedure})
    run_id = run.info.run_id
    params = [Param(f"sweep.{k}", v) for k, v in sorted(mlflow_run.flatten(sweep).items())]
    for i in range(0, len(params), 100):  # MLflow's log_batch limit
        mlflow_run.call(client.log_batch, run_id, params=params[i : i + 100])
    study.set_user_attr(STUDY_ATTR, run_id)
    return run_id


def child_tags(parent_id: str, study: str, number: int) -> dict[str, str]:
    """The tags that make a trial's training run a child of the sweep's run."""
    return {PARENT_TAG: parent_id, "surgflow.sweep": study, "surgflow.trial": str(number)}


def log_trial(client: Any, parent_id: str, metric: str, number: int, state: str,
              value: float | None, child_id: str | None) -> None:
    """One finished trial on the parent run (and its state on the trial's own run)."""
    from mlflow.entities import Metric

    if value is not None:
        mlflow_run.send(client, parent_id, [Metric(f"trial_{metric}", float(value),
                                                   _now_ms(), number)])
    if child_id:
        mlflow_run.call(client.set_tag, child_id, "surgflow.trial.state", state)


def close_parent(client: Any, parent_id: str, metric: str, best: dict[str, Any] | None) -> None:
    """The best trial as tags and ``best_<metric>``; the run ends FINISHED."""
    from mlflow.entities import Metric

    if best is not None:
        for key in ("number", "run_id", "model", "verdict"):
            if best.get(key) is not None:
                mlflow_run.call(client.set_tag, parent_id, f"surgflow.best.{key}",
                                str(best[key]))
        mlflow_run.send(client, parent_id, [Metric(f"best_{metric}", float(best["value"]),
                                                   _now_ms(), int(best["number"]))])
    mlflow_run.close_run(client, parent_id, failed=False)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
