"""`surgflow models ...` and `surgflow mlflow ui` as a user runs them: SPEC §7 JSON, exit codes
0/2/1 with one-line reasons, on the real embedded MLflow store."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from surgflow.processes import free_port
from surgflow.registry import ModelRegistry
from tests.cli_helpers import cli_error, run_cli, start_cli
from tests.test_model_registry import NAME, register_version, tamper

if TYPE_CHECKING:
    from tests.fixtures.models import TrainedBundle

LIST_KEYS = ["name", "version", "created_at", "run_id", "recipe", "stages", "verdict"]
SHOW_KEYS = [*LIST_KEYS, "dataset_versions", "metrics", "artifacts", "seal", "alias_drift"]
MOVE_KEYS = ["name", "stage", "from", "to"]
HISTORY_KEYS = ["stage", "from", "to", "at", "by", "via", "reason"]


@pytest.fixture
def reg(surgflow_home: Path, tiny_chain_bundle: TrainedBundle) -> ModelRegistry:
    """Three registered versions of the tiny chain, candidate at 3, no production."""
    reg = ModelRegistry()
    for recipe in ("tiny-a", "tiny-b", "tiny-c"):
        register_version(reg, tiny_chain_bundle.bundle_dir, recipe_name=recipe)
    return reg


def test_list_and_show_json_are_spec_documents(reg: ModelRegistry) -> None:
    rows = run_cli("models", "list", json=True).data
    assert [list(r) for r in rows] == [LIST_KEYS] * 3
    assert [(r["version"], r["recipe"], r["stages"], r["verdict"]) for r in rows] == [
        (1, "tiny-a", [], None), (2, "tiny-b", [], None), (3, "tiny-c", ["candidate"], None)]
    assert run_cli("models", "list", NAME, json=True).data == rows

    shown = run_cli("models", "show", f"{NAME}@2", json=True).data
    assert list(shown) == SHOW_KEYS
    assert {k: shown[k] for k in LIST_KEYS} == rows[1]
    assert shown["dataset_versions"] == ["cholecystectomy@1"] and shown["seal"] is None
    assert [(a["name"], a["sha256"]) for a in shown["artifacts"]] == sorted(
        reg.get(NAME, 2).hashes.items())
    assert {a["name"] for a in shown["artifacts"]} >= {"encoder.onnx", "temporal.onnx",
                                                       "golden.npz", "parity.json"}
    # each path opens as given, and what it opens hashes to its sha256
    for a in shown["artifacts"]:
        path = Path(a["path"])
        assert path.is_absolute() and path.name == Path(a["name"]).name, a
        assert hashlib.sha256(path.read_bytes()).hexdigest() == a["sha256"], a
    assert shown["alias_drift"] == []
    assert run_cli("models", "show", f"{NAME}@candidate", json=True).data["version"] == 3

    people = run_cli("models", "list")
    assert people.returncode == 0 and NAME in people.stdout and "candidate" in people.stdout


def test_promote_rollback_and_history(reg: ModelRegistry) -> None:
    assert "no seal" in cli_error(2, "models", "promote", f"{NAME}@1")
    assert "--force needs --reason" in cli_error(2, "models", "promote", f"{NAME}@1", "--force")
    assert reg.production(NAME) is None

    first = run_cli("models", "promote", f"{NAME}@1", "--force", "--reason", "first release",
                    json=True).data
    assert first == {"name": NAME, "stage": "production", "from": None, "to": 1}
    assert list(first) == MOVE_KEYS
    assert run_cli("models", "promote", f"{NAME}@2", "--to", "production", "--force",
                   "--reason", "second", json=True).data["from"] == 1
    assert run_cli("models", "show", f"{NAME}@production", json=True).data["version"] == 2
    assert run_cli("models", "rollback", NAME, json=True).data == {
        "name": NAME, "stage": "production", "from": 2, "to": 1}
    assert "no earlier production" in cli_error(2, "models", "rollback", NAME)

    moves = run_cli("models", "history", NAME, json=True).data
    assert all(list(m) == HISTORY_KEYS for m in moves)
    prod = [m for m in moves if m["stage"] == "production"]
    assert [(m["from"], m["to"]) for m in prod] == [(None, 1), (1, 2), (2, 1)]
    assert "first release" in prod[0]["reason"] and prod[2]["reason"].startswith("rollback")
    assert [m["to"] for m in moves if m["stage"] == "candidate"] == [1, 2, 3]


def test_tampered_onnx_blocks_promote_and_rollback(reg: ModelRegistry) -> None:
    reg.promote(NAME, 1, by="test", force=True, reason="first")
    reg.promote(NAME, 2, by="test", force=True, reason="second")
    before = reg.history(NAME)
    tamper(reg, 1, "encoder.onnx")
    reason = cli_error(2, "models", "rollback", NAME)
    assert "encoder.onnx" in reason and reg.get(NAME, 1).hashes["encoder.onnx"] in reason
    tamper(reg, 3, "temporal.onnx")
    assert "temporal.onnx" in cli_error(2, "models", "promote", f"{NAME}@3", "--force", "--reason",
                                    "x")
    assert reg.production(NAME) == 2 and reg.history(NAME) == before


def test_unknown_model_version_or_reference_exit_2(reg: ModelRegistry) -> None:
    assert "unknown model 'nope-phase'" in cli_error(2, "models", "show", "nope-phase@1")
    assert "versions: 1, 2, 3" in cli_error(2, "models", "show", f"{NAME}@9")
    assert "no version is production" in cli_error(2, "models", "show", f"{NAME}@production")
    assert "expected NAME@VERSION" in cli_error(2, "models", "show", NAME)
    assert "unknown model" in cli_error(2, "models", "history", "nope-phase")


def test_unreachable_tracking_server_exits_1_at_once(surgflow_home: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    r = run_cli("models", "list", json=True, env={"MLFLOW_TRACKING_URI": uri}, check=False,
                timeout=60)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert time.monotonic() - start < 30
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and uri in lines[0]


@pytest.mark.slow
def test_mlflow_ui_serves_the_embedded_store(reg: ModelRegistry) -> None:
    port = free_port()
    proc = start_cli("mlflow", "ui", "--port", str(port), json=True, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "the command exited before printing its URL"
        started = json.loads(line)
        assert started["url"] == f"http://127.0.0.1:{port}" and started["started"] is True
        assert requests.get(f"{started['url']}/health", timeout=10).ok
        found = requests.get(f"{started['url']}/api/2.0/mlflow/registered-models/get",
                             params={"name": NAME}, timeout=10).json()
        assert found["registered_model"]["aliases"] == [{"alias": "candidate", "version": "3"}]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)


def test_gate_without_a_field_suite_rejects_and_exits_0(reg: ModelRegistry) -> None:
    seal = run_cli("models", "gate", f"{NAME}@candidate", json=True).data
    assert seal["model"] == f"{NAME}@3" and seal["verdict"] == "rejected"
    assert any(not c["passed"] and c["reason"] for c in seal["checks"])
    assert reg.pointers(NAME).get("approved") is None
