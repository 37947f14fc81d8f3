"""Every training run is an MLflow run; metrics and utilisation arrive while it trains."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from surgflow import tracking
from surgflow.config import get_settings
from surgflow.training import mlflow_run
from surgflow.training.pipeline import execute_run, prepare_run
from surgflow.training.runs import RunStore
from tests.training_helpers import labelled_home, tiny_recipe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_home(tmp_path_factory.mktemp("tracking"))


def _history(client, run_id: str, key: str) -> list:
    try:
        return client.get_metric_history(run_id, key)
    except Exception as e:  # the store is busy with the ranks' writes: ask again
        if "locked" in str(e):
            return []
        raise


def test_metrics_and_utilisation_reach_mlflow_while_the_run_trains(dask_cluster, home, tmp_path):
    recipe_file = tmp_path / "live.yaml"
    recipe_file.write_text("name: live\n")  # the file as the researcher wrote it, kept as-is
    recipe = tiny_recipe(name="live", optim={"epochs": 8, "clips_per_epoch": 96})
    run_id = prepare_run(recipe, home, recipe_path=str(recipe_file))
    record = RunStore(home).get(run_id)
    mlflow_id = record["mlflow_run_id"]
    client = tracking.client(get_settings(home=home))
    run = client.get_run(mlflow_id)
    assert client.get_experiment(run.info.experiment_id).name == "surgflow/cholecystectomy"
    assert run.info.run_name == run_id and run.info.status == "RUNNING"
    assert run.data.params["optim.epochs"] == "8" and run.data.params["model.architecture"] == \
        "tiny2d" and run.data.params["data.sources"] == '["cholecystectomy@1"]'
    assert run.data.tags["surgflow.dataset_versions"] == "cholecystectomy@1"
    assert run.data.tags["surgflow.code_version"].startswith(("git:", "surgflow-"))
    artifacts = {a.path for a in client.list_artifacts(mlflow_id, "recipe")}
    assert artifacts == {"recipe/live.yaml", "recipe/recipe.json"}

    done: dict = {}
    t = threading.Thread(target=lambda: done.update(record=execute_run(
        run_id, home, dask_cluster, job_extra={"sample_interval_s": 0.2, "log_interval_s": 0.5})),
        daemon=True)
    t.start()
    seen_live = None
    deadline = time.monotonic() + 240
    while t.is_alive() and time.monotonic() < deadline:
        f1 = _history(client, mlflow_id, "clip/val_macro_f1")
        util = [_history(client, mlflow_id, f"util/rank{r}/cpu_percent") for r in (0, 1)]
        if f1 and all(util) and len(f1) < 8:
            seen_live = {"epochs": len(f1), "util": [len(u) for u in util]}
            break
        time.sleep(0.2)
    assert seen_live is not None, "no metrics or utilisation appeared in MLflow during training"
    assert t.is_alive(), "training ended before the check; the run is too short for this test"
    t.join(timeout=240)
    assert done["record"]["status"] == "succeeded"

    run = client.get_run(mlflow_id)
    assert run.info.status == "FINISHED"
    f1 = client.get_metric_history(mlflow_id, "clip/val_macro_f1")
    assert sorted(m.step for m in f1) == list(range(1, 9))
    for key in ("clip/train_loss", "clip/train_samples_per_s", "clip/lr", "clip/val_accuracy"):
        assert len(client.get_metric_history(mlflow_id, key)) == 8, key
    cpu = client.get_metric_history(mlflow_id, "util/rank1/cpu_percent")
    # utilisation samples carry their own times, inside the run and on the epochs' axis
    start, end = run.info.start_time, run.info.end_time
    assert len(cpu) >= 8 and all(start <= m.timestamp <= end for m in cpu)
    assert {m.step for m in cpu} == set(range(len(cpu)))

    run_dir = RunStore(home).dir(run_id)
    assert not (run_dir / "epochs").exists() and not (run_dir / "utilisation").exists()
    shown = RunStore(home).show(run_id)
    assert [e["epoch"] for e in shown["epochs"]] == list(range(1, 9))
    assert shown["epochs"][-1]["val"]["macro_f1"] == pytest.approx(
        max(f1, key=lambda m: m.step).value)
    assert set(shown["utilisation"]["per_rank"]) == {"0", "1"}
    assert len(shown["launch_s"]) == 1 and 0 < shown["launch_s"][0] < 60


def test_a_failed_run_ends_failed_in_mlflow(dask_cluster, home):
    recipe = tiny_recipe(name="doomed", optim={"epochs": 1})
    run_id = prepare_run(recipe, home)
    # the run's pinned recipe asks for a class count its data cannot have
    (RunStore(home).dir(run_id) / "recipe.json").write_text(
        (RunStore(home).dir(run_id) / "recipe.json").read_text().replace(
            '"procedure": "cholecystectomy"', '"procedure": "no-such-procedure"'))
    with pytest.raises(Exception):  # noqa: B017 - whatever the rank raised
        execute_run(run_id, home, dask_cluster)
    mlflow_id = RunStore(home).get(run_id)["mlflow_run_id"]
    client = tracking.client(get_settings(home=home))
    assert client.get_run(mlflow_id).info.status == "FAILED"


def test_flatten_and_epoch_metrics_are_plain_data():
    assert mlflow_run.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x"}) == {
        "a.b": "1", "a.c": "[1, 2]", "d": "null", "e": "x"}
    rows = mlflow_run.epoch_metrics("clip", 3, {
        "train": {"loss": 1.5, "samples_per_s": 20.0}, "val": {"macro_f1": 0.5}, "lr": 0.01,
        "finished_at": "2026-12-01T00:00:01.000Z"})
    got = {m.key: (m.value, m.step, m.timestamp) for m in rows}
    ts = 1796083201000
    assert got == {"clip/epoch": (3.0, 3, ts), "clip/lr": (0.01, 3, ts),
                   "clip/train_loss": (1.5, 3, ts), "clip/train_samples_per_s": (20.0, 3, ts),
                   "clip/val_macro_f1": (0.5, 3, ts)}
    sample = {"t": 2.5, "rank": 1, "cpu_percent": 50.0, "rss_mb": 10.0, "loader_wait_s": 0.0,
              "gpu_util_percent": None, "gpu_mem_mb": None}
    assert {m.key for m in mlflow_run.sample_metrics(sample, 4)} == {
        "util/rank1/cpu_percent", "util/rank1/rss_mb", "util/rank1/loader_wait_s"}
