"""A chained recipe trains both stages over DDP; stage-1 features are cached per (model, video)."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgflow.data.versions import DatasetStore
from surgflow.training.chain import chain_version
from surgflow.training.features import FeatureCache
from surgflow.training.pipeline import execute_run, prepare_run
from surgflow.training.runs import RunStore
from tests.training_helpers import labelled_home, tiny_recipe

pytestmark = pytest.mark.integration

TEMPORAL = {"stages": 2, "layers": 5, "channels": 16,
            "optim": {"epochs": 12, "batch_size": 1, "lr": 0.01, "schedule": "constant"}}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_home(tmp_path_factory.mktemp("chain"))


def test_chain_trains_both_stages_from_cached_features(dask_cluster, home):
    recipe = tiny_recipe(name="chain", temporal=TEMPORAL)
    run_id = prepare_run(recipe, home)
    record = execute_run(run_id, home, dask_cluster)
    assert record["status"] == "succeeded"
    stages = record["result"]["stages"]
    clip, feats, temporal = stages["clip"], stages["features"], stages["temporal"]
    assert temporal["stage1_version"] == clip["version"]
    assert record["result"]["model_version"] == chain_version([clip["version"],
                                                               temporal["version"]])
    videos = DatasetStore(home).videos_table("cholecystectomy", 1).to_pylist()
    assert feats == {**feats, "computed": len(videos), "cached": 0}
    cache = FeatureCache(home)
    for v in videos:
        got = cache.get(clip["version"], v["sha256"])
        seconds = -(-v["num_frames"] // round(v["fps"]))
        assert got is not None and got.shape == (seconds, 64)  # tiny2d features per second

    epochs = [e for e in RunStore(home).epochs(run_id) if e["stage"] == "temporal"]
    assert len(epochs) == 12
    assert epochs[-1]["train"]["loss"] < epochs[0]["train"]["loss"]
    assert epochs[-1]["val"]["accuracy"] > 0.4  # 7 phases: chance is 1/7
    assert temporal["videos"] == {"train": 6, "val": 2}
    # the temporal network starts as its encoder (epoch 0) and keeps its best epoch, so the
    # chain never ends below the encoder alone on the seconds both are scored on
    final = temporal["final"]
    assert 0 <= final["selected_epoch"] <= 12 and final["val"]["macro_f1"] >= max(
        final["last_val"]["macro_f1"], temporal["encoder_val"]["macro_f1"])


def test_resume_by_hand_skips_finished_work_and_reuses_the_feature_cache(dask_cluster, home):
    recipe = tiny_recipe(name="resume", temporal={**TEMPORAL, "optim": {"epochs": 3}})
    run_id = prepare_run(recipe, home)
    first = execute_run(run_id, home, dask_cluster)
    run_dir = RunStore(home).dir(run_id)
    # lose the last temporal epoch, as if the group had died before writing it
    (run_dir / "checkpoints" / "temporal" / "epoch-0003.pt").unlink()
    RunStore(home).update(run_id, status="failed")
    assert prepare_run(recipe, home, resume=run_id) == run_id
    again = execute_run(run_id, home, dask_cluster)
    stages = again["result"]["stages"]
    assert stages["clip"]["resumed_from_epoch"] == 3  # stage 1 was already finished
    assert stages["clip"]["version"] == first["result"]["stages"]["clip"]["version"]
    assert stages["features"]["computed"] == 0 and stages["features"]["cached"] == 8
    assert stages["temporal"]["resumed_from_epoch"] == 2
    assert len(again["attempts"]) == 2
    # per-epoch seeding: the resumed run ends with exactly the weights of the uninterrupted one
    assert again["result"]["model_version"] == first["result"]["model_version"]


def test_seeded_runs_are_reproducible_on_cpu(dask_cluster, home):
    recipe = tiny_recipe(name="seeded", optim={"epochs": 2})
    a = execute_run(prepare_run(recipe, home), home, dask_cluster)
    b = execute_run(prepare_run(recipe, home), home, dask_cluster)
    assert a["result"]["model_version"] == b["result"]["model_version"]
    other = tiny_recipe(name="seeded", optim={"epochs": 2, "seed": 4})
    c = execute_run(prepare_run(other, home), home, dask_cluster)
    assert c["result"]["model_version"] != a["result"]["model_version"]


def test_preparing_a_run_pins_versions_and_refuses_empty_or_missing_data(home):
    from surgflow.errors import BadInput, NotFound

    run_id = prepare_run(tiny_recipe(name="pin"), home)
    assert RunStore(home).get(run_id)["dataset_versions"] == ["cholecystectomy@1"]
    assert RunStore(home).get(run_id)["views"]["val"]["videos"] == 2
    with pytest.raises(NotFound, match=r"no version 5; versions are 1\.\.1"):
        prepare_run(tiny_recipe(data={"sources": ["cholecystectomy@5"]}), home)
    with pytest.raises(BadInput, match="train split of cholecystectomy@1 has no labelled clips"):
        prepare_run(tiny_recipe(data={"sources": ["cholecystectomy"],
                                      "filter": "label = 'NoSuchPhase'"}), home)
