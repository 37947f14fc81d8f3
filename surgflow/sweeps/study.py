"""A recipe's sweep: an Optuna study whose trials are training runs on the Dask cluster.

The study is named after the recipe and lives in an RDB store (``SURGFLOW_SWEEP_STORAGE``, by
default SQLite at ``SURGFLOW_HOME/sweeps/optuna.db``). Trial 0 is the recipe as written (its own
values enqueued first), so the sweep says whether its best trial beats the recipe. Every trial
is a training run made the way ``surgflow train`` makes one
(:func:`~surgflow.training.pipeline.prepare_run`, then
:func:`~surgflow.training.pipeline.execute_run`), a child of the sweep's MLflow run, with its
ranks reporting each epoch's validation metric to the trial and stopping when the median pruner
prunes it (:mod:`surgflow.training.pruning`). Up to ``concurrency`` trials train at once, one
thread each, each holding ``world_size`` workers of the cluster (a
:class:`~surgflow.training.launcher.WorkerLease` keeps them apart).

Resuming: ``trials`` is the number of finished trials the study should hold, so running the
sweep again only runs what is missing. Each running trial's driver records a heartbeat; a
trial whose heartbeat stopped for ``STALE_BEATS`` intervals (its sweep process was killed) is
failed by the next sweep of the study and queued again with the same values (Optuna's
``fail_stale_trials`` with ``RetryHeartbeatStaleTrialCallback``). A trial still beating belongs
to another live sweep process: this one waits for it to finish or go stale.

The best trial's run is released by ``release(run_id)`` (the CLI passes the release flow:
export, register, gate), once: the study remembers which run it released.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from surgflow.config import Settings
from surgflow.errors import BadInput, ConfigError, SurgflowError
from surgflow.sweeps import parent_run, space
from surgflow.sweeps.census import (
    chain_value,
    first_error,
    remaining,
    row,
    state_of,
    summarise,
)
from surgflow.training.pruning import METRICS, engine_kwargs, trial_id, trial_job
from surgflow.training.recipe import Recipe, SweepSpec

log = logging.getLogger(__name__)

#: seconds between a running trial's heartbeats
HEARTBEAT_S = 5
#: heartbeats a trial may miss before it counts as left behind by a killed sweep
STALE_BEATS = 4
#: finished trials before any may be pruned: trial 0, the recipe as written, and one more (the
#: median of one trial would prune every trial that trails the recipe at any epoch)
STARTUP_TRIALS = 2
#: times a trial left behind by killed sweeps is queued again
MAX_RETRIES = 2


def run_sweep(settings: Settings, recipe: Recipe, recipe_path: str | Path | None, *,
              trials: int | None = None, concurrency: int | None = None,
              client: Any = None, release: Callable[[str], Mapping[str, Any]] | None = None,
              hold: Callable[[], AbstractContextManager[Any]] | None = None,
              heartbeat_s: int = HEARTBEAT_S) -> dict[str, Any]:
    """Run ``recipe``'s sweep until its study holds ``trials`` finished trials (default: the
    sweep section's), ``concurrency`` at once (default 1); returns the summary (see
    :func:`summarise`) with the released best trial's ``model`` and ``verdict``.

    ``client`` is a Dask client to train on (default: :func:`~surgflow.training.cluster.connect`
    with ``concurrency × world_size`` local workers); ``release(run_id)`` releases the best
    trial's run and returns at least ``model`` and ``verdict``; ``hold()`` is entered around
    each trial's training (a GPU slot)."""
    spec = space.sweep_spec(recipe)
    origin = f"recipe {recipe_path or recipe.name}"
    target = spec.trials if trials is None else trials
    concurrency = 1 if concurrency is None else concurrency
    if target < 1:
        raise BadInput(f"--trials {target}: a sweep runs at least 1 trial")
    if concurrency < 1:
        raise BadInput(f"--concurrency {concurrency}: at least 1 trial runs at a time")
    if spec.metric not in METRICS:
        raise ConfigError(f"{origin}: field 'sweep.metric': unknown metric {spec.metric!r}; "
                          f"known: {', '.join(METRICS)}")
    url = settings.sweep_storage_url()
    storage, study = open_study(url, recipe, heartbeat_s=heartbeat_s)
    from surgflow import tracking

    mlflow = tracking.client(settings)
    parent_id = parent_run.open_parent(mlflow, study, procedure=recipe.procedure,
                                       recipe_name=recipe.name,
                                       sweep=spec.model_dump(mode="json"), settings=settings)
    res = recipe.resources
    with _cluster(client, settings, concurrency * res.world_size, res.gpus_per_rank) as c:
        from surgflow.training.launcher import pick_workers

        pick_workers(c, res.world_size, res.gpus_per_rank, 10.0)  # too small: fail before any
        sweep = _Sweep(study, storage, recipe, recipe_path, settings, c, target=target,
                       url=url, parent_id=parent_id, mlflow=mlflow, hold=hold,
                       heartbeat_s=heartbeat_s)
        sweep.run(concurrency)
    summary = summarise(study.get_trials(deepcopy=False), study=study.study_name,
                        storage=masked(url), metric=spec.metric, direction=spec.direction,
                        ran=sorted(sweep.ran)) | {"mlflow_run_id": parent_id}
    best = summary["best"]
    if best is None:
        c = summary["counts"]
        raise SurgflowError(f"sweep {study.study_name!r}: no trial completed ({c['failed']} "
                            f"failed, {c['pruned']} pruned); first failure: "
                            f"{first_error(summary['trials'])}")
    if release is not None:
        best |= _release(study, best["run_id"], release)
    parent_run.close_parent(mlflow, parent_id, spec.metric, best)
    return summary


def open_study(url: str, recipe: Recipe, *, heartbeat_s: int = HEARTBEAT_S) -> tuple[Any, Any]:
    """The store at ``url`` (with heartbeats) and ``recipe``'s study in it, created if new; a
    new study's first trial is queued with the recipe's own values (the baseline, trial 0).

    A study made from another version of the recipe (other training or search settings; its
    ``trials``, description, triggers and gate may differ) is refused: its trials would not be
    comparable with new ones."""
    import optuna

    spec = space.sweep_spec(recipe)
    base = space.base_values(recipe)
    space.apply(recipe, base, name=space.trial_name(recipe, 0))  # trial 0 must be a recipe
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        try:
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs(url), heartbeat_interval=heartbeat_s,
                grace_period=heartbeat_s * STALE_BEATS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRIES))
        except Exception as e:
            raise ConfigError(f"SURGFLOW_SWEEP_STORAGE: cannot open the study store at "
                              f"{masked(url)}: {' '.join(str(e).split())[:300]}") from e
    study = optuna.create_study(
        storage=storage, study_name=recipe.name, direction=spec.direction, pruner=pruner(spec),
        load_if_exists=True)
    # seeded by the trials the study holds: a new study samples the same values every time,
    # and a resumed one goes on instead of drawing its first values again
    study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.trials))
    digest = recipe_digest(recipe)
    made_from = study.user_attrs.get("recipe_digest")
    if made_from is None:
        study.set_user_attr("recipe_digest", digest)
    elif made_from != digest or study.direction.name.lower() != spec.direction:
        raise BadInput(
            f"study {recipe.name!r} in {masked(url)} was made from another version of recipe "
            f"{recipe.name!r} (its training or search settings differ); run it with the recipe "
            "it was made from, or rename the recipe to start a new study")
    if not study.trials:
        study.enqueue_trial(base, user_attrs={"baseline": True}, skip_if_exists=True)
    return storage, study


def pruner(spec: SweepSpec) -> Any:
    """The study's pruner: median pruning after the warm-up epochs, or none."""
    import optuna

    if not spec.pruning:
        return optuna.pruners.NopPruner()
    job = trial_job(storage="", study="", trial_number=0, metric=spec.metric,
                    warmup_epochs=spec.warmup_epochs, startup_trials=STARTUP_TRIALS)
    return optuna.pruners.MedianPruner(**job["pruner"])


def recipe_digest(recipe: Recipe) -> str:
    """sha256 of what makes a study's trials comparable: the recipe but its description,
    triggers, gate and number of trials."""
    data = recipe.model_dump(mode="json")
    content = {k: v for k, v in data.items() if k not in ("description", "triggers", "gate")}
    content["sweep"] = {k: v for k, v in (data.get("sweep") or {}).items() if k != "trials"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def masked(url: str) -> str:
    """``url`` without its password, to print."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- running trials ------------------------------------------------------------------------------

class _Sweep:
    """The trials one sweep process runs: ``concurrency`` threads, each asking the study for
    its next trial (under one lock) and training it."""

    def __init__(self, study: Any, storage: Any, recipe: Recipe,
                 recipe_path: str | Path | None, settings: Settings, client: Any, *,
                 target: int, url: str, parent_id: str, mlflow: Any,
                 hold: Callable[[], AbstractContextManager[Any]] | None, heartbeat_s: int):
        from surgflow.training.launcher import WorkerLease

        self.study, self.storage, self.recipe, self.settings = study, storage, recipe, settings
        self.recipe_path = str(recipe_path) if recipe_path is not None else None
        self.client, self.target, self.url = client, target, url
        self.parent_id, self.mlflow, self.heartbeat_s = parent_id, mlflow, heartbeat_s
        self.hold = hold or contextlib.nullcontext
        self.spec = space.sweep_spec(recipe)
        self.lease = WorkerLease()
        self.lock = threading.Lock()  # the study's asks and tells
        self.prepare_lock = threading.Lock()  # one run directory made at a time
        self.ours: set[int] = set()
        self.ran: list[int] = []
        self.errors: list[BaseException] = []

    def run(self, concurrency: int) -> None:
        threads = [threading.Thread(target=self._worker, name=f"sweep-{i}", daemon=True)
                   for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():  # a timed join: Ctrl-C still reaches the main thread
                t.join(timeout=0.5)
        if self.errors:
            raise self.errors[0]

    def _worker(self) -> None:
        try:
            while (nxt := self._next()) is not None:
                self._run(*nxt)
        except BaseException as e:
            log.exception("sweep %s: a trial thread stopped", self.study.study_name)
            self.errors.append(e)

    def _next(self) -> tuple[Any, _Heartbeat] | None:
        """The next trial to train (a queued one first) with its heartbeat beating, or None
        when the study will hold its target once the running trials finish. Waits while a
        trial of another sweep process is running: it either finishes or goes stale, and a
        stale one is queued again."""
        import optuna

        while True:
            with self.lock, _quiet():
                optuna.storages.fail_stale_trials(self.study)
                trials = self.study.get_trials(deepcopy=False)
                if remaining(trials, self.target) > 0:
                    trial = self.study.ask()
                    self.ours.add(trial.number)
                    # at once: a running trial without a heartbeat would never go stale
                    return trial, _Heartbeat(self.storage, trial_id(
                        self.storage, self.study.study_name, trial.number), self.heartbeat_s)
                others = [t.number for t in trials
                          if state_of(t) == "running" and t.number not in self.ours]
            if not others:
                return None
            log.info("sweep %s: waiting for trials %s of another sweep process to finish or "
                     "go stale", self.study.study_name, others)
            time.sleep(self.heartbeat_s)

    def _run(self, trial: Any, beat: _Heartbeat) -> None:
        import optuna

        try:
            state, value, attrs = self._train(trial)
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            with self.lock, _quiet():
                if state == optuna.trial.TrialState.COMPLETE:
                    self.study.tell(trial, value, skip_if_finished=True)
                else:
                    self.study.tell(trial, state=state, skip_if_finished=True)
        finally:
            beat.stop()
        self.ran.append(trial.number)
        told = next((row(t) for t in self.study.get_trials(deepcopy=False)
                     if t.number == trial.number), None)
        state = told["state"] if told else "failed"
        value = told["value"] if told and state == "complete" else None
        log.info("sweep %s: trial %d %s (%s %s)", self.study.study_name, trial.number, state,
                 self.spec.metric, told["value"] if told else None)
        try:
            child = None
            if told and told["run_id"]:
                from surgflow.training.runs import RunStore

                child = RunStore(self.settings.home).get(told["run_id"]).get("mlflow_run_id")
            parent_run.log_trial(self.mlflow, self.parent_id, self.spec.metric, trial.number,
                                 state, value, child)
        except Exception as e:  # the trial is told; its MLflow echo is not worth a sweep
            log.warning("sweep %s: could not log trial %d to MLflow: %s",
                        self.study.study_name, trial.number, e)

    def _train(self, trial: Any) -> tuple[Any, float | None, dict[str, Any]]:
        """Train ``trial``: (its state, its value, user attributes to keep)."""
        import optuna

        from surgflow.training.pipeline import execute_run, prepare_run

        states = optuna.trial.TrialState
        name = self.study.study_name
        try:
            recipe, values = space.trial_recipe(self.recipe, trial)
        except ConfigError as e:
            log.warning("sweep %s: trial %d cannot train: %s", name, trial.number, e)
            return states.FAIL, None, {"error": str(e)}
        log.info("sweep %s: trial %d starts: %s", name, trial.number, values)
        try:
            with self.prepare_lock:
                run_id = prepare_run(recipe, self.settings.home, recipe_path=self.recipe_path,
                                     mlflow_tags=parent_run.child_tags(self.parent_id, name,
                                                                       trial.number))
            trial.set_user_attr("run_id", run_id)
            job = {"trial": trial_job(storage=self.url, study=name, trial_number=trial.number,
                                      metric=self.spec.metric,
                                      warmup_epochs=self.spec.warmup_epochs,
                                      startup_trials=STARTUP_TRIALS,
                                      pruning=self.spec.pruning)}
            with self.hold():
                record = execute_run(run_id, self.settings.home, self.client, job_extra=job,
                                     lease=self.lease)
        except Exception as e:
            log.warning("sweep %s: trial %d failed: %s: %s", name, trial.number,
                        type(e).__name__, e)
            return states.FAIL, None, {"error": f"{type(e).__name__}: {e}"[:2000]}
        if record["status"] == "pruned":
            return states.PRUNED, None, {"pruned": record["result"]["pruned"]}
        return states.COMPLETE, chain_value(record, self.spec.metric), {}


class _Heartbeat:
    """A running trial's heartbeat in the store, every ``every_s`` seconds until stopped: the
    sign that its sweep process is alive (what ``fail_stale_trials`` reads)."""

    def __init__(self, storage: Any, trial_id: int, every_s: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, every_s),
                                        name=f"sweep-heartbeat-{trial_id}", daemon=True)
        storage.record_heartbeat(trial_id)
        self._thread.start()

    def _beat(self, storage: Any, trial_id: int, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as e:  # a busy store for a moment; the grace period covers it
                log.warning("heartbeat of trial id %d not recorded: %s", trial_id, e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _release(study: Any, run_id: str,
             release: Callable[[str], Mapping[str, Any]]) -> dict[str, Any]:
    """``release(run_id)`` once per run: the study keeps what its best run's release made."""
    done = study.user_attrs.get("release")
    if isinstance(done, dict) and done.get("run_id") == run_id:
        return {"model": done.get("model"), "verdict": done.get("verdict")}
    out = release(run_id)
    result = {"model": out.get("model"), "verdict": out.get("verdict")}
    study.set_user_attr("release", {"run_id": run_id} | result)
    return result


@contextmanager
def _cluster(client: Any, settings: Settings, n_workers: int, gpus: int) -> Iterator[Any]:
    if client is not None:
        yield client
        return
    from surgflow.training.cluster import connect

    with connect(n_workers, gpus_per_worker=gpus, settings=settings) as c:
        yield c


@contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's notices about its experimental heartbeat API, used here on purpose (ask and
    tell with heartbeats our own threads record), not news to a user."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        yield
