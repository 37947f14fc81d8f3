"""A recipe may take a stage from the production chain instead of training it."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgflow.errors import BadInput
from surgflow.training import checkpoints
from surgflow.training.pipeline import execute_run, prepare_run
from surgflow.training.runs import RunStore
from tests.training_helpers import labelled_home, tiny_recipe

pytestmark = pytest.mark.integration

TEMPORAL = {"stages": 2, "layers": 3, "channels": 8, "optim": {"epochs": 2}}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_home(tmp_path_factory.mktemp("reuse"), n_train=4, n_val=2, duration_s=12)


@pytest.fixture(scope="module")
def production(dask_cluster, home, tmp_path_factory) -> Path:
    """The bundle of a trained chain, standing in for the procedure's production version."""
    from surgflow.export import bundle_from_run

    recipe = tiny_recipe(name="prod", optim={"epochs": 1}, temporal=TEMPORAL)
    run_id = prepare_run(recipe, home)
    assert execute_run(run_id, home, dask_cluster)["status"] == "succeeded"
    out = tmp_path_factory.mktemp("production") / "bundle"
    bundle_from_run(RunStore(home).dir(run_id), out, home=home)
    return out


def test_a_temporal_stage_from_production_is_reused_not_trained(dask_cluster, home, production):
    from surgflow.training.stage_files import load_torch_chain

    asked = []
    recipe = tiny_recipe(name="swap-encoder", optim={"epochs": 1, "seed": 9},
                         temporal={"from": "production"})
    run_id = prepare_run(recipe, home,
                         resolve_production=lambda p: asked.append(p) or production)
    assert asked == ["cholecystectomy"]
    assert RunStore(home).get(run_id)["reuse"] == {"temporal": str(production)}
    record = execute_run(run_id, home, dask_cluster)
    stages = record["result"]["stages"]
    _, temporal, _ = load_torch_chain(production)
    assert stages["temporal"]["reused"] == str(production)
    assert stages["temporal"]["version"] == checkpoints.weights_digest(temporal)
    assert stages["temporal"]["final"]["val"]["samples"] > 0  # the chain it makes, scored
    assert "macro_f1" in stages["temporal"]["encoder_val"]
    run_dir = RunStore(home).dir(run_id)
    assert checkpoints.latest(run_dir, "clip") is not None  # the encoder was trained
    assert checkpoints.latest(run_dir, "temporal") is None  # production's stage is in its bundle


def test_an_encoder_from_production_feeds_a_newly_trained_temporal_stage(
        dask_cluster, home, production):
    from surgflow.training.stage_files import load_torch_chain

    recipe = tiny_recipe(name="swap-temporal", model={"from": "production"}, temporal=TEMPORAL)
    run_id = prepare_run(recipe, home, resolve_production=lambda p: production)
    record = execute_run(run_id, home, dask_cluster)
    stages = record["result"]["stages"]
    encoder, _, _ = load_torch_chain(production)
    assert stages["clip"]["version"] == checkpoints.weights_digest(encoder)
    assert stages["clip"]["reused"] == str(production) and stages["clip"]["epochs"] == 0
    assert stages["temporal"]["stage1_version"] == stages["clip"]["version"]
    assert stages["temporal"]["final"]["epoch"] == 2
    run_dir = RunStore(home).dir(run_id)
    assert checkpoints.latest(run_dir, "clip") is None
    assert checkpoints.latest(run_dir, "temporal") is not None


def test_reuse_needs_a_production_chain_that_fits(dask_cluster, home, production):
    recipe = tiny_recipe(name="no-registry", temporal={"from": "production"})
    with pytest.raises(BadInput, match="reuses the temporal stage of the production chain"):
        prepare_run(recipe, home)
    # production's encoder reads 32 px frames; a recipe at 48 px cannot take it
    other = tiny_recipe(name="misfit", model={"from": "production"}, temporal=TEMPORAL,
                        clip={"size": 48})
    run_id = prepare_run(other, home, resolve_production=lambda p: production)
    with pytest.raises(BadInput, match=r"its encoder reads clips .*'size': 32.* recipe's clip"):
        execute_run(run_id, home, dask_cluster)
