"""DDP on a real local Dask cluster: placement, identical weights, learning, worker death."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from surgflow.training import checkpoints
from surgflow.training.launcher import ClusterTooSmall, launch, local_ranks, suitable_workers
from surgflow.training.models import build_clip_model
from surgflow.training.pipeline import execute_run, prepare_run
from surgflow.training.runs import RunStore
from tests.training_helpers import labelled_home, tiny_recipe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_home(tmp_path_factory.mktemp("launcher"))


def _where(job, rank, world, host, port, local_rank):
    import os as _os

    return {"rank": rank, "world": world, "master": f"{host}:{port}", "pid": _os.getpid(),
            "local_rank": local_rank}


def test_local_ranks_count_ranks_per_host():
    workers = ["tcp://a:1", "tcp://b:1", "tcp://a:2", "tcp://a:3", "tcp://b:2"]
    assert local_ranks(workers) == [0, 0, 1, 2, 1]


def test_suitable_workers_filters_by_gpu_resource():
    workers = {"tcp://b:1": {"resources": {"GPU": 1}}, "tcp://a:1": {"resources": {}},
               "tcp://c:1": {}}
    assert suitable_workers(workers, 0) == ["tcp://a:1", "tcp://b:1", "tcp://c:1"]
    assert suitable_workers(workers, 1) == ["tcp://b:1"]


def test_ranks_run_on_distinct_workers_with_one_master(dask_cluster):
    out = launch(dask_cluster, _where, {}, world_size=2)
    assert [r["rank"] for r in out.results] == [0, 1]
    assert len({r["pid"] for r in out.results}) == 2  # two worker processes
    assert len({r["master"] for r in out.results}) == 1
    assert [r["local_rank"] for r in out.results] == [0, 1]  # both on this host
    assert len(out.attempts) == 1 and out.attempts[0].error is None


def test_more_ranks_than_workers_is_a_clear_error(dask_cluster):
    with pytest.raises(ClusterTooSmall, match=r"world size 3 needs 3 Dask workers.*has 2"):
        launch(dask_cluster, _where, {}, world_size=3, worker_wait_s=1)
    with pytest.raises(ClusterTooSmall, match="GPU resource"):
        launch(dask_cluster, _where, {}, world_size=1, gpus_per_rank=1, worker_wait_s=1)


def test_two_rank_gloo_training_learns_and_ends_with_identical_weights(dask_cluster, home):
    recipe = tiny_recipe(name="ddp", optim={"epochs": 4, "num_workers": 1})  # loader workers too
    run_id = prepare_run(recipe, home)
    record = execute_run(run_id, home, dask_cluster)
    assert record["status"] == "succeeded"
    ranks = record["result"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["pid"] != ranks[1]["pid"]
    assert ranks[0]["model_version"] == ranks[1]["model_version"]

    # the checkpoint rank 0 wrote holds those same weights, without a DDP "module." prefix
    state = checkpoints.load(checkpoints.latest(RunStore(home).dir(run_id), "clip"))
    model = build_clip_model("tiny2d", 7)
    model.load_state_dict(state["model"])
    assert checkpoints.weights_digest(model) == ranks[0]["model_version"]
    assert state["dataset_versions"] == ["cholecystectomy@1"] and state["epoch"] == 4
    assert state["code_version"] and state["recipe"]["name"] == "ddp"

    epochs = RunStore(home).epochs(run_id)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["train"]["loss"] < epochs[0]["train"]["loss"]
    assert epochs[-1]["val"]["accuracy"] > 0.4  # chance is 1/7
    shown = RunStore(home).show(run_id)
    assert set(shown["utilisation"]["per_rank"]) == {"0", "1"}
    assert len(shown["launch_s"]) == 1 and 0 < shown["launch_s"][0] < 60


def test_killing_a_worker_restarts_the_group_from_the_last_checkpoint(dask_cluster, home):
    recipe = tiny_recipe(name="crash", optim={"epochs": 8, "clips_per_epoch": 320},
                         clip={"size": 48})
    run_id = prepare_run(recipe, home)
    run_dir = RunStore(home).dir(run_id)
    done: dict = {}
    t = threading.Thread(target=lambda: done.update(
        record=execute_run(run_id, home, dask_cluster)), daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while checkpoints.latest(run_dir, "clip") is None:
        assert time.monotonic() < deadline and t.is_alive(), "no checkpoint appeared"
        time.sleep(0.1)
    victim = RunStore(home).get(run_id)["attempts"][0]["workers"][1]
    pid = dask_cluster.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    t.join(timeout=240)
    assert not t.is_alive()
    record = done["record"]
    assert record["status"] == "succeeded"
    first, second = record["attempts"][:2]
    assert len(record["attempts"]) == 2
    # the killed worker is the reason, not rank 0's collective failing as its peer drops
    assert first["error"] == f"worker {victim} (rank [1]) died", first["error"]
    clip = record["result"]["stages"]["clip"]
    assert clip["resumed_from_epoch"] is not None and 1 <= clip["resumed_from_epoch"] < 8
    assert clip["final"]["epoch"] == 8
    assert second["workers"] != first["workers"]  # a new worker took the dead one's place
    state = torch.load(checkpoints.latest(run_dir, "clip"), weights_only=False)
    assert state["epoch"] == 8


def test_loader_workers_on_a_daemonic_dask_worker_fail_with_the_fix_named(home):
    from distributed import Client, LocalCluster

    from surgflow.errors import ConfigError

    recipe = tiny_recipe(name="daemonic", optim={"epochs": 1, "num_workers": 1},
                         resources={"world_size": 1})
    run_id = prepare_run(recipe, home)
    with (LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
          Client(cluster) as client,
          pytest.raises(ConfigError, match="DASK_DISTRIBUTED__WORKER__DAEMON=False")):
        execute_run(run_id, home, client)
    record = RunStore(home).get(run_id)
    assert record["status"] == "failed" and len(record["attempts"]) == 1  # not retried


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without GPUs")
def test_a_local_gpu_cluster_on_a_machine_without_gpus_is_refused_up_front():
    from surgflow.config import get_settings
    from surgflow.errors import ConfigError
    from surgflow.training.cluster import connect

    with pytest.raises(ConfigError, match="asks for 2 GPU ranks but this machine has 0 GPUs"), \
            connect(2, gpus_per_worker=1, settings=get_settings(dask_address=None)):
        pass
