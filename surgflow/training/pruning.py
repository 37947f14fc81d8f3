"""A sweep trial's side of training: report each epoch's validation metric, stop when pruned.

A run launched as a trial of a sweep carries ``job["trial"]`` (see :func:`trial_job`): where
the study lives, which trial this run is, the metric it reports and the pruner that judges it.
Rank 0 reports the metric of every finished epoch to the trial (``trial.report(value, step)``),
asks the pruner (``trial.should_prune()``) and broadcasts the answer, so that all ranks stop
after the same epoch (:func:`surgflow.training.distributed.broadcast_flag`). ``step`` counts the
run's epochs across its stages: the encoder's epochs are steps 1…E, the temporal network's
epochs E+1…, so trials of one recipe compare at the same point of training.

A run without ``job["trial"]`` trains exactly as before: nothing here is called.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: what a trial may report: the keys of every validation metric dict of the training loop
METRICS = ("macro_f1", "accuracy", "loss")


def trial_job(*, storage: str, study: str, trial_number: int, metric: str,
              warmup_epochs: int, startup_trials: int, pruning: bool = True) -> dict[str, Any]:
    """The ``job["trial"]`` entry of a run that is trial ``trial_number`` of ``study``."""
    return {"storage": storage, "study": study, "trial_number": trial_number, "metric": metric,
            "pruning": pruning,
            "pruner": {"n_startup_trials": startup_trials,
                       # a step is an epoch counted from 1: epochs 1…warmup are never pruned
                       "n_warmup_steps": warmup_epochs + 1}}


def trial_id(storage: Any, study: str, number: int) -> int:
    """The storage's id of trial ``number`` of ``study`` (what its heartbeats are kept by)."""
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study), number)


@dataclass
class Pruned:
    """Where a trial was stopped: the stage, its epoch, the global step and the value there."""

    stage: str
    epoch: int
    step: int
    value: float

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "epoch": self.epoch, "step": self.step,
                "value": self.value}


class TrialReporter:
    """Rank 0's link to its trial: :meth:`report` sends one epoch's metric and says whether
    the pruner stops the trial there. The study is opened on first use."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.metric = str(spec["metric"])
        if self.metric not in METRICS:
            raise ValueError(f"trial metric {self.metric!r}: expected one of {', '.join(METRICS)}")
        self._trial: Any = None

    def _open(self) -> Any:
        import optuna

        storage = optuna.storages.RDBStorage(self.spec["storage"],
                                             engine_kwargs=engine_kwargs(self.spec["storage"]))
        pruner = optuna.pruners.MedianPruner(**self.spec["pruner"])
        study = optuna.load_study(study_name=self.spec["study"], storage=storage, pruner=pruner)
        number = int(self.spec["trial_number"])
        # the driver holds the trial it asked for; this rank works on the same stored trial
        return optuna.trial.Trial(study, trial_id(storage, self.spec["study"], number))

    def report(self, step: int, metrics: dict[str, float]) -> bool:
        """Report ``metrics[metric]`` at ``step``; True when the trial is to stop there."""
        import optuna

        if self._trial is None:
            self._trial = self._open()
        try:
            with warnings.catch_warnings():
                # a step reported again (the epoch re-run after a group restart) keeps its value
                warnings.filterwarnings("ignore", message=".*already reported.*")
                self._trial.report(float(metrics[self.metric]), step)
        except optuna.exceptions.UpdateFinishedTrialError:
            # the trial was finished elsewhere: its sweep process died and a later one failed
            # it as stale (and queued it again); this run is nobody's trial any more
            log.warning("trial %s of study %s is finished already; stopping this run",
                        self.spec["trial_number"], self.spec["study"])
            return True
        if not self.spec.get("pruning", True):
            return False
        return bool(self._trial.should_prune())


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for a study store: SQLite waits for a busy database (the
    driver and the ranks of concurrent trials write to one file) instead of failing at once."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
