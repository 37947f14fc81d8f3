"""Sweeps: a trial's values become its recipe; a real sweep on the Dask cluster prunes a poor
trial, and a sweep whose process was killed resumes without redoing finished trials."""

from __future__ import annotations

import json
import subprocess
import time
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import FixedTrial, TrialState, create_trial

from surgflow.config import get_settings
from surgflow.errors import ConfigError
from surgflow.sweeps import space
from surgflow.sweeps.census import remaining, summarise
from surgflow.sweeps.study import open_study, run_sweep
from surgflow.training.pruning import trial_id
from surgflow.training.runs import RunStore
from tests.cli_helpers import SURGFLOW, cli_env, run_cli
from tests.training_helpers import labelled_home, tiny_recipe

REPO = Path(__file__).resolve().parents[1]

SPACE = {
    "optim.lr": {"low": 1e-4, "high": 0.1, "log": True},
    "optim.batch_size": {"low": 8, "high": 32, "step": 8},
    "optim.optimizer": {"choices": ["sgd", "adamw"]},
    "augment.flip": {"low": 0.0, "high": 1.0, "step": 0.25},
    "model.dropout": {"low": 0.0, "high": 0.5},
}


def swept(**sweep) -> object:
    return tiny_recipe(sweep={"trials": 4, "space": SPACE} | sweep)


# -- the pure mapping: trial values → recipe -----------------------------------------------------

def test_a_trial_samples_each_field_with_its_own_kind():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    recipe = swept()
    for _ in range(20):
        trial = study.ask()
        values = space.suggest(trial, recipe.sweep.space)
        assert type(values["optim.batch_size"]) is int and values["optim.batch_size"] in (
            8, 16, 24, 32)
        assert type(values["optim.lr"]) is float and 1e-4 <= values["optim.lr"] <= 0.1
        assert values["optim.optimizer"] in ("sgd", "adamw")
        assert values["augment.flip"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        study.tell(trial, 0.0)
    dists = study.trials[0].distributions
    assert dists["optim.lr"].log and not dists["model.dropout"].log
    assert type(dists["optim.batch_size"]).__name__ == "IntDistribution"


def test_the_trial_recipe_carries_the_values_and_the_trial_name():
    recipe = swept()
    trial = FixedTrial({"optim.lr": 0.003, "optim.batch_size": 24, "optim.optimizer": "sgd",
                        "augment.flip": 0.25, "model.dropout": 0.1}, number=7)
    got, values = space.trial_recipe(recipe, trial)
    assert got.name == "tiny-t7" and got.sweep is None
    assert (got.optim.lr, got.optim.batch_size, got.optim.optimizer) == (0.003, 24, "sgd")
    assert got.augment.flip == 0.25 and got.model.dropout == 0.1
    assert values["optim.batch_size"] == 24
    # everything not searched is the recipe's own, the data section's pinned view included
    assert got.clip == recipe.clip and got.data == recipe.data and got.optim.seed == 3


def test_a_value_the_recipe_cannot_take_names_the_field():
    recipe = swept()
    with pytest.raises(ConfigError, match=r"field 'model\.dropout'.*less than 1"):
        space.apply(recipe, {"model.dropout": 1.5}, name="tiny-t1")
    with pytest.raises(ConfigError, match=r"field 'optim\.epochs'.*valid integer"):
        space.apply(recipe, {"optim.epochs": 2.5})
    with pytest.raises(ConfigError, match=r"'temporal\.layers'.*no 'temporal' section"):
        space.apply(recipe, {"temporal.layers": 4})


def test_trial_zero_is_the_recipe_as_written():
    recipe = swept()
    assert space.base_values(recipe) == {"optim.lr": 0.01, "optim.batch_size": 16,
                                         "optim.optimizer": "adamw", "augment.flip": 0.5,
                                         "model.dropout": 0.0}
    assert type(space.base_values(recipe)["optim.batch_size"]) is int
    outside = tiny_recipe(sweep={"space": {"optim.optimizer": {"choices": ["sgd", "adam"]}}})
    with pytest.raises(ConfigError, match=r"sweep\.space\.optim\.optimizer.*'adamw' lies outside"):
        space.base_values(outside)
    off_step = tiny_recipe(sweep={"space": {"augment.flip": {"low": 0.0, "high": 1.0,
                                                             "step": 0.3}}})
    with pytest.raises(ConfigError, match=r"augment\.flip.*0\.5 lies outside.*step 0\.3"):
        space.base_values(off_step)
    with pytest.raises(ConfigError, match=r"log range cannot have a step"):
        space.check_param("optim.lr", swept().sweep.space["optim.lr"].model_copy(
            update={"step": 0.1}))
    with pytest.raises(ConfigError, match=r"recipe 'tiny' has no sweep section"):
        space.base_values(tiny_recipe())


def test_the_census_counts_a_retried_trial_once():
    dist = {"x": FloatDistribution(0, 1)}

    def t(number, state, value=None, **system):
        frozen = create_trial(state=state, value=value, params={"x": 0.5}, distributions=dist,
                              system_attrs=system)
        frozen.number = number
        return frozen

    trials = [t(0, TrialState.COMPLETE, 0.4), t(1, TrialState.PRUNED),
              t(2, TrialState.FAIL), t(3, TrialState.WAITING, failed_trial=2, retry_history=[2]),
              t(4, TrialState.FAIL)]
    # 0 and 1 finished, 2 is replaced by its retry 3 (waiting: not taken yet), 4 failed for good
    assert remaining(trials, 5) == 2
    s = summarise(trials, study="s", storage="u", metric="macro_f1", direction="maximize",
                  ran=[])
    assert s["counts"] == {"complete": 1, "pruned": 1, "failed": 2, "running": 0, "waiting": 1}
    assert s["best"]["number"] == 0 and s["trials"][3]["retry_of"] == 2


def test_the_study_store_setting_is_checked():
    with pytest.raises(ConfigError, match="SURGFLOW_SWEEP_STORAGE: expected a database URL"):
        get_settings(sweep_storage="mongodb://db/studies")
    with pytest.raises(ConfigError, match="SURGFLOW_SWEEP_STORAGE: a SQLite URL"):
        get_settings(sweep_storage="sqlite://relative.db")
    home = get_settings(home=Path("/srv/sf"))
    assert home.sweep_storage_url() == "sqlite:////srv/sf/sweeps/optuna.db"
    assert get_settings(sweep_storage="postgresql://u@db/s").sweep_storage_url() == \
        "postgresql://u@db/s"


def test_a_recipe_without_a_sweep_section_exits_2_naming_it(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe().model_dump(mode="json")))
    run = run_cli("sweep", str(path), home=tmp_path / "home", check=False)
    assert run.returncode == 2 and f"recipe {path}: has no sweep section" in run.stderr
    assert run.stdout == ""


# -- real sweeps on the session's Dask cluster ---------------------------------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_home(tmp_path_factory.mktemp("sweeps"), n_train=4, n_val=2, duration_s=12)


@pytest.mark.integration
def test_a_sweep_prunes_a_poor_trial_and_resumes_after_its_process_was_killed(
        dask_cluster, home):
    settings = get_settings(home=home)
    recipe = tiny_recipe(
        name="swept", optim={"epochs": 2, "clips_per_epoch": 64},
        resources={"world_size": 1},
        sweep={"trials": 3, "warmup_epochs": 0,
               "space": {"optim.lr": {"low": 1e-7, "high": 0.1, "log": True}}})
    url = settings.sweep_storage_url()
    storage, study = open_study(url, recipe)
    # the recipe as written, queued first
    assert [t.system_attrs["fixed_params"] for t in study.trials] == [{"optim.lr": 0.01}]
    study.enqueue_trial({"optim.lr": 0.02})
    study.enqueue_trial({"optim.lr": 1e-7})  # a rate that cannot learn in 2 epochs
    released: list[str] = []

    def release(run_id: str) -> dict:
        released.append(run_id)
        return {"model": "cholecystectomy-phase@9", "verdict": "rejected"}

    first = run_sweep(settings, recipe, None, trials=3, client=dask_cluster, release=release,
                      heartbeat_s=1)
    assert first["ran"] == [0, 1, 2]
    t0, t1, t2 = first["trials"]
    assert t0["baseline"] and not t1["baseline"]
    assert (t0["state"], t1["state"]) == ("complete", "complete") and 0 < t0["value"] <= 1
    # median pruning against trials 0 and 1 at the first epoch: it stopped there, on its rank
    median = (t0["value"] + t1["value"]) / 2
    assert t2["state"] == "pruned" and t2["pruned_at"] == 1 and t2["value"] < median
    pruned_run = RunStore(home).get(t2["run_id"])
    assert pruned_run["status"] == "pruned" and pruned_run["result"]["pruned"]["epoch"] == 1
    best = max((t0, t1), key=lambda t: t["value"])
    assert first["best"] == {"number": best["number"], "value": best["value"],
                             "params": best["params"], "run_id": best["run_id"],
                             "model": "cholecystectomy-phase@9", "verdict": "rejected"}
    assert first["baseline"]["number"] == 0
    assert first["beats_baseline"] is (t1["value"] > t0["value"])
    assert released == [best["run_id"]]

    from surgflow import tracking

    mlflow = tracking.client(settings)
    for row in (t0, t1, t2):
        child = mlflow.get_run(RunStore(home).get(row["run_id"])["mlflow_run_id"])
        assert child.data.tags["mlflow.parentRunId"] == first["mlflow_run_id"]
        assert child.data.tags["surgflow.trial.state"] == row["state"]
    parent = mlflow.get_run(first["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["surgflow.sweep"] == "swept"

    # a sweep process killed while training trial 3: the trial stays RUNNING, its heartbeat
    # stopped
    study.enqueue_trial({"optim.lr": 0.003})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's note: heartbeats are meant for optimize()
        left = study.ask()
    storage.record_heartbeat(trial_id(storage, "swept", left.number))
    runs_before = {r["run_id"] for r in RunStore(home).list()}

    started = time.monotonic()
    again = run_sweep(settings, recipe, None, trials=4, client=dask_cluster, release=release,
                      heartbeat_s=1)
    by_number = {t["number"]: t for t in again["trials"]}
    # the stale trial failed and ran again as trial 4, with its values; 0-2 were not redone
    assert again["ran"] == [4]
    assert by_number[3]["state"] == "failed" and by_number[3]["run_id"] is None
    assert by_number[4]["retry_of"] == 3 and by_number[4]["params"] == {"optim.lr": 0.003}
    assert by_number[4]["state"] in ("complete", "pruned")
    assert [by_number[n]["run_id"] for n in (0, 1, 2)] == [t["run_id"] for t in (t0, t1, t2)]
    new_runs = {r["run_id"] for r in RunStore(home).list()} - runs_before
    assert new_runs == {by_number[4]["run_id"]}
    assert again["mlflow_run_id"] == first["mlflow_run_id"]  # the same parent, reopened
    assert time.monotonic() - started >= 4  # it waited for the heartbeat to go stale
    # the best run was released once; a new best is released in its turn
    assert released == [best["run_id"]] + ([again["best"]["run_id"]]
                                           if again["best"]["number"] == 4 else [])

    # nothing left to do: a third run trains nothing
    third = run_sweep(settings, recipe, None, trials=4, client=dask_cluster, heartbeat_s=1)
    assert third["ran"] == [] and third["counts"]["complete"] + third["counts"]["pruned"] == 4


@pytest.mark.slow
@pytest.mark.integration
def test_the_dashboard_serves_the_study_on_loopback(home, tmp_path):
    import httpx

    recipe_file = tmp_path / "swept.yaml"
    recipe = tiny_recipe(name="dash", sweep={"space": {"optim.lr": {"low": 1e-4,
                                                                     "high": 0.1}}})
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    settings = get_settings(home=tmp_path / "dash-home")
    open_study(settings.sweep_storage_url(), recipe)
    proc = subprocess.Popen([SURGFLOW, "sweep", "ui", str(recipe_file), "--port", "0",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env(tmp_path / "dash-home"))
    try:
        shown = json.loads(proc.stdout.readline())
        assert shown["study"] == "dash"
        assert shown["url"].startswith("http://127.0.0.1:") and "/dashboard/studies/" in \
            shown["url"]
        page = httpx.get(shown["url"], timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        api = httpx.get(shown["url"].split("/dashboard")[0] + "/api/studies", timeout=30)
        assert [s["study_name"] for s in api.json()["study_summaries"]] == ["dash"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


# -- the demo recipe's own sweep, through the CLI, killed once -----------------------------------

def shifted_home(root: Path) -> Path:
    """A home whose validation videos come from a hospital the training videos do not (its
    colours, noise and frame size differ): a chain that does not score perfectly on it, so
    a sweep has something to win."""
    from surgflow.data.splits import ids_filling_splits, split_of
    from surgflow.data.synthetic import generate_video
    from tests.dataset_helpers import import_labelled

    by_source: dict[str, list[Path]] = {}
    for i, vid in ids_filling_splits({"train": 6, "val": 3}, "case-{:04d}".format):
        hospital = ("hospital-a", "hospital-b")[i % 2] if split_of(vid) == "train" \
            else "hospital-c"
        path = root / "videos" / f"{vid}.mp4"
        generate_video(path, seed=i + 1, duration_s=30, fps=10, width=64, height=64, gop=10,
                       hospital=hospital)
        by_source.setdefault(hospital, []).append(path)
    home = root / "home"
    for source, videos in by_source.items():
        import_labelled(home, [root], videos, "cholecystectomy", source)
    return home


def _trials(url: str, study: str) -> list:
    """The study's trials as the store holds them now (none while the sweep creates it)."""
    if not Path(url.removeprefix("sqlite:///")).is_file():
        return []
    try:  # read only: the sweep process creates the tables
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True,
                                             skip_compatibility_check=True)
        return storage.get_all_trials(storage.get_study_id_from_name(study), deepcopy=False)
    except Exception:  # the sweep has not made its study yet
        return []


@pytest.mark.slow
@pytest.mark.integration
def test_the_demo_recipe_sweep_beats_its_recipe_prunes_and_resumes_after_a_kill(
        prefect_server, dask_cluster, tmp_path_factory, tmp_path):
    """``surgflow sweep recipes/tiny.yaml``: six trials of the demo chain at two ranks each;
    the process is killed with SIGKILL while a trial trains, and run again."""
    import os
    import signal

    from tests.cli_helpers import start_cli

    home = shifted_home(tmp_path_factory.mktemp("demo-sweep"))
    recipe = REPO / "recipes" / "tiny.yaml"
    env = {"PREFECT_API_URL": prefect_server,
           "SURGFLOW_DASK_ADDRESS": dask_cluster.scheduler.address}
    url = get_settings(home=home).sweep_storage_url()
    log = (tmp_path / "killed.log").open("w")
    proc = start_cli("sweep", "run", str(recipe), home=home, env=env, json=True,
                     stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        trials = _trials(url, "cholec-tiny")
        done = [t for t in trials if t.state.is_finished()]
        if len(done) >= 2 and any(t.state == TrialState.RUNNING for t in trials):
            break
        time.sleep(1)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    trials = _trials(url, "cholec-tiny")
    finished = {t.number: t.user_attrs.get("run_id") for t in trials if t.state.is_finished()}
    killed = [t.number for t in trials if t.state == TrialState.RUNNING]
    assert len(finished) >= 2 and len(killed) == 1

    # the rerun goes through the `gpu` concurrency limit: each trial trains in one of its slots
    from prefect import get_client

    from surgflow_flows.pipeline import GPU_LIMIT, ensure_gpu_limit

    ensure_gpu_limit(1)
    try:
        rerun = run_cli("sweep", "run", str(recipe), home=home, env=env, json=True,
                        timeout=1800)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
    assert "1 at once (gpu limit: 1)" in rerun.stderr
    out = rerun.data
    rows = {t["number"]: t for t in out["trials"]}
    # the finished trials were not trained again; the killed one failed and ran again
    assert not set(out["ran"]) & set(finished)
    assert {n: rows[n]["run_id"] for n in finished} == finished
    assert rows[killed[0]]["state"] == "failed"
    (retry,) = [t for t in out["trials"] if t["retry_of"] == killed[0]]
    assert retry["params"] == rows[killed[0]]["params"] and retry["number"] in out["ran"]
    counts = out["counts"]
    assert counts["complete"] + counts["pruned"] == 6 and counts["pruned"] >= 1
    # trial 0 is the recipe as written; the best trial beats it on the chain's val macro F1
    assert out["baseline"]["number"] == 0 and rows[0]["params"] == {
        "optim.lr": 0.01, "optim.optimizer": "adamw", "augment.flip": 0.5,
        "temporal.layers": 6}
    assert out["beats_baseline"] is True and out["best"]["value"] > out["baseline"]["value"]
    # a pruned trial stopped on both ranks at the same epoch
    pruned = next(t for t in out["trials"] if t["state"] == "pruned" and t["run_id"])
    result = RunStore(home).get(pruned["run_id"])["result"]
    assert result["pruned"]["step"] == pruned["pruned_at"] and len(result["ranks"]) == 2
    # the best trial's chain went through the release flow: registered, gated
    best = out["best"]
    assert best["model"].startswith("cholecystectomy-phase@") and best["verdict"] in (
        "approved", "rejected")
    shown = run_cli("models", "show", best["model"], home=home, env=env, json=True).data
    assert shown["recipe"] == f"cholec-tiny-t{best['number']}"
    print(f"demo sweep: {json.dumps({k: out[k] for k in ('counts', 'best', 'baseline')})}")
