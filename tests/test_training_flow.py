"""The training flow under a real Prefect server, on the session's Dask cluster, via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.cli_helpers import run_cli
from tests.training_helpers import labelled_home

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_home(tmp_path_factory.mktemp("flow"))


def test_train_command_runs_the_flow_and_publishes_epoch_artifacts(
    prefect_server, dask_cluster, home, tmp_path
):
    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    recipe["optim"]["epochs"] = 2
    recipe["temporal"]["optim"]["epochs"] = 3
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {"PREFECT_API_URL": prefect_server,
           "SURGFLOW_DASK_ADDRESS": dask_cluster.scheduler.address}

    def cli(*args: str):
        return run_cli(*args, home=home, env=env, json=True, cwd=tmp_path).data

    summary = cli("train", str(path))  # exactly one JSON document on stdout
    assert summary["status"] == "succeeded" and summary["attempts"] == 1
    assert summary["dataset_versions"] == ["cholecystectomy@1"]
    assert set(summary["stages"]) == {"clip", "temporal"}
    # training ends in a registered, exported, gated candidate; with no field suite pinned
    # the gate rejects it and seals nothing (a seal needs a field suite)
    assert summary["model"] == "cholecystectomy-phase@1" and summary["verdict"] == "rejected"
    shown = cli("models", "show", "cholecystectomy-phase@1")
    assert shown["stages"] == ["candidate"] and shown["seal"] is None
    assert {a["name"] for a in shown["artifacts"]} >= {"encoder.onnx", "temporal.onnx"}
    run_id = summary["run_id"]

    shown = cli("runs", "show", run_id)
    assert [(e["stage"], e["epoch"]) for e in shown["epochs"]] == [
        ("clip", 1), ("clip", 2), ("temporal", 1), ("temporal", 2), ("temporal", 3)]
    assert shown["utilisation"]["samples"] > 0 and shown["params"]["chain"] is True
    listed = cli("runs", "list")
    assert run_id in [r["run_id"] for r in listed]
    plotted = cli("runs", "plot", run_id)
    assert Path(plotted["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from prefect.artifacts import Artifact

    key = f"training-{run_id.lower()}"
    progress = Artifact.get(f"{key}-progress")
    table = Artifact.get(f"{key}-metrics")
    assert progress is not None and float(progress.data) == 100.0
    rows = json.loads(table.data)
    assert len(rows) == 5 and {"val_accuracy", "val_macro_f1", "train_loss"} <= set(rows[0])


def test_the_server_validates_flow_parameters(prefect_server):
    from prefect.deployments import run_deployment

    from surgflow_flows.training import training_flow

    deployment = training_flow.to_deployment(name="params-check", enforce_parameter_schema=True)
    deployment.apply()
    with pytest.raises(Exception, match=r"Validation failed for field .params.recipe_path"):
        run_deployment("surgflow-training/params-check",
                       parameters={"params": {"recipe_path": {"not": "a path"}}}, timeout=0)
    ok = run_deployment("surgflow-training/params-check",
                        parameters={"params": {"recipe_path": "recipes/tiny.yaml"}}, timeout=0)
    assert ok.parameters["params"]["recipe_path"] == "recipes/tiny.yaml"


def test_unknown_run_is_bad_input(tmp_path):
    out = run_cli("runs", "show", "no-such-run", home=tmp_path, json=True, check=False,
                  cwd=tmp_path)
    assert out.returncode == 2 and "no-such-run" in out.stderr and out.stdout == ""


def test_resuming_a_finished_run_is_refused(prefect_server, home, tmp_path):
    from surgflow.training.pipeline import prepare_run
    from surgflow.training.runs import RunStore
    from tests.training_helpers import tiny_recipe

    run_id = prepare_run(tiny_recipe(name="done"), home)
    RunStore(home).update(run_id, status="succeeded")
    out = run_cli("train", "--resume", run_id, home=home, env={"PREFECT_API_URL": prefect_server},
                  json=True, check=False, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stdout == "" and f"run {run_id!r} already finished" in out.stderr.splitlines()[-1]


def test_models_architectures_command_lists_the_registry(tmp_path):
    rows = run_cli("models", "architectures", json=True, cwd=tmp_path).data
    assert {"resnet50", "r3d_18", "mstcn"} <= {r["name"] for r in rows}


def test_dry_run_shows_the_view_and_starts_nothing(home, tmp_path):
    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    recipe["data"]["min_confidence"] = None
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    before = sorted(p.name for p in home.iterdir())
    kw = {"home": home, "env": {"SURGFLOW_DASK_ADDRESS": "tcp://127.0.0.1:9"},
          "unset": ["PREFECT_API_URL"], "cwd": tmp_path}
    out = run_cli("train", str(path), "--dry-run", json=True, **kw)
    view = out.data
    assert view["dataset_versions"] == ["cholecystectomy@1"] and view["chain"] is True
    train, val = view["splits"]["train"], view["splits"]["val"]
    assert (train["videos"], val["videos"]) == (6, 2)
    assert train["sources"] == {"hospital-a": {"videos": 6, "clips": train["clips"]}}
    shares = train["labels"]
    assert sum(r["clips"] for r in shares.values()) == train["clips"]
    # inverse-frequency balancing aims every label at the same share and gets there
    assert all(r["target"] == pytest.approx(1 / len(shares)) for r in shares.values())
    assert all(r["achieved"] == pytest.approx(r["target"], abs=1e-6) for r in shares.values())
    assert max(r["natural"] for r in shares.values()) > 1.5 / len(shares)
    # no server, cluster, MLflow store or run was started or written
    assert sorted(p.name for p in home.iterdir()) == before
    assert "Prefect" not in out.stderr

    table = run_cli("train", str(path), "--dry-run", **kw)
    assert "achieved" in table.stdout and "hospital-a" in table.stdout


# ~20 s: a Prefect server of its own, started by the command; in the default suite
# test_runtime starts, reuses and stops one, and the train command runs on the session's
@pytest.mark.slow
def test_train_says_it_leaves_running_the_prefect_server_it_started(tmp_path):
    from surgflow.cli.local.prefect_server import running_server, stop_server

    own = tmp_path / "home"
    kw = {"home": own, "unset": ["PREFECT_API_URL"], "json": True, "check": False,
          "cwd": tmp_path}
    try:
        out = run_cli("train", "--resume", "no-such-run", **kw)
        url = running_server(own)
        assert url is not None  # started for this command, and left running
        notes = [line for line in out.stderr.splitlines() if "still running" in line]
        assert len(notes) == 1 and url in notes[0] and "surgflow down" in notes[0]
        assert out.returncode == 2 and out.stdout == ""
        again = run_cli("train", "--resume", "no-such-run", **kw)
        assert "still running" not in again.stderr  # it found that server; it started none
    finally:
        stop_server(own)
