"""The model registry on the real embedded MLflow store: versions, artifacts and their sha256,
compare-and-set pointer moves with history, seals, promotion and rollback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from surgflow import tracking
from surgflow.errors import BadInput, ConflictError, NotFound
from surgflow.evaluation.gate import gate_spec
from surgflow.registry import ArtifactMismatch, ModelRegistry, model_name, parse_ref

if TYPE_CHECKING:
    from tests.fixtures.models import TrainedBundle

NAME = model_name("cholecystectomy")
GATE = {"min": {"macro_f1": 0.1}, "max_regression": 0.05}  # fields of GateSpec


def register_version(reg: ModelRegistry, bundle_dir: Path, **overrides: Any):
    """Register ``bundle_dir`` as the chain of a fresh MLflow run of the procedure."""
    c = reg.client
    run = c.create_run(tracking.experiment_id(c, "surgflow/cholecystectomy", reg.settings))
    kwargs: dict[str, Any] = {
        "procedure": "cholecystectomy", "bundle_dir": bundle_dir, "run_id": run.info.run_id,
        "recipe_name": "tiny", "recipe": {"name": "tiny", "gate": GATE},
        "recipe_path": "recipes/tiny.yaml", "dataset_versions": ["cholecystectomy@1"],
        "code_version": "git:test", "metrics": {"val": {"macro_f1": 0.5, "accuracy": 0.6}},
    }
    return reg.register(**(kwargs | overrides))


def make_seal(version: int, verdict: str = "approved", baseline: int | None = None,
              field_suite: str = "cholecystectomy@7") -> dict:
    passed = verdict == "approved"
    return {
        "model": f"{NAME}@{version}", "verdict": verdict,
        "baseline": None if baseline is None else f"{NAME}@{baseline}",
        "field_suite": field_suite, "sealed_at": "2026-11-30T02:41:00Z",
        "checks": [{"name": "macro_f1.min", "value": 0.81 if passed else 0.41, "baseline": None,
                    "threshold": 0.6, "passed": passed,
                    "reason": "macro F1 0.810 >= 0.600" if passed else "macro F1 0.410 < 0.600"}],
        "onnx": {"sha256": "0" * 64, "max_abs_diff": 3e-6, "top1_agreement": 1.0,
                 "passed": True},
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tamper(reg: ModelRegistry, version: int, file: str = "encoder.onnx") -> Path:
    path = reg.bundle(NAME, version, verify=False) / file
    with open(path, "ab") as f:
        f.write(b"\x00tampered")
    return path


@pytest.fixture
def reg(surgflow_home: Path) -> ModelRegistry:
    return ModelRegistry()


def test_register_creates_next_version_with_artifact_hashes(
    reg: ModelRegistry, tiny_chain_bundle: TrainedBundle
) -> None:
    bundle = tiny_chain_bundle.bundle_dir
    v1 = register_version(reg, bundle)
    v2 = register_version(reg, bundle, recipe_name="tiny-b")
    assert (v1.version, v2.version) == (1, 2)
    assert v2.stages == ["candidate"] and reg.get(NAME, 1).stages == []
    assert v2.recipe == "tiny-b" and v2.dataset_versions == ["cholecystectomy@1"]
    assert v2.metrics == {"val": {"macro_f1": 0.5, "accuracy": 0.6}}
    assert v2.parity["passed"] is True and v2.unpromotable_reason is None

    files = {p.name: sha256(p) for p in bundle.iterdir() if p.is_file()}
    registered = v2.hashes
    assert set(registered) == set(files) | {"recipe.json"}
    assert {k: registered[k] for k in files} == files
    local = reg.bundle(NAME, 2)
    assert {p.name: sha256(p) for p in local.iterdir()} == registered
    assert json.loads((local / "recipe.json").read_text())["gate"] == GATE
    # the gate block a version keeps is the one its regression gate applies
    gate = gate_spec(reg.recipe(NAME, 2), f"{NAME}@2")
    assert gate.minimums() == {"macro_f1": 0.1}
    assert gate.drops() == {"accuracy": 0.05, "macro_f1": 0.05}
    assert reg.recipe(NAME, 2)["name"] == "tiny"

    # the MLflow record itself: tags on the version, artifacts on the run
    mv = reg.client.get_model_version(NAME, "2")
    assert mv.tags["sha256/encoder.onnx"] == files["encoder.onnx"]
    assert mv.run_id == v2.run_id and reg.client.get_registered_model(NAME).aliases == {
        "candidate": 2}
    assert [m["to"] for m in reg.history(NAME)] == [1, 2]

    # the same run again with the same bundle is the version it already made
    again = register_version(reg, bundle, run_id=v2.run_id, recipe_name="tiny-b")
    assert again.version == 2 and len(reg.list(NAME)) == 2


def test_a_run_registers_one_chain(reg: ModelRegistry, tiny_chain_bundle: TrainedBundle,
                                   tmp_path: Path) -> None:
    v1 = register_version(reg, tiny_chain_bundle.bundle_dir)
    other = shutil.copytree(tiny_chain_bundle.bundle_dir, tmp_path / "other")
    (other / "golden.npz").write_bytes((other / "golden.npz").read_bytes() + b"\x00")
    with pytest.raises(ConflictError, match="already registered"):
        register_version(reg, other, run_id=v1.run_id)
    assert [v.version for v in reg.list(NAME)] == [1]
    reg.bundle(NAME, 1)  # the first version's artifacts were not touched


def test_unknown_model_version_and_stage(reg: ModelRegistry,
                                         tiny_chain_bundle: TrainedBundle) -> None:
    with pytest.raises(NotFound, match=r"unknown model 'nope-phase'; registered models: \(none"):
        reg.get("nope-phase", 1)
    register_version(reg, tiny_chain_bundle.bundle_dir)
    with pytest.raises(NotFound, match="registered models: cholecystectomy-phase"):
        reg.list("nope-phase")
    with pytest.raises(NotFound, match=r"@7: no such version; versions: 1"):
        reg.get(NAME, 7)
    with pytest.raises(NotFound, match="no version is production yet"):
        reg.get(NAME, "production")
    assert reg.production(NAME) is None and reg.production("nope-phase") is None
    assert reg.get(NAME, "candidate").version == 1
    with pytest.raises(BadInput, match="expected NAME@VERSION"):
        parse_ref("cholecystectomy-phase")
    with pytest.raises(BadInput, match="neither a number"):
        parse_ref("cholecystectomy-phase@latest")


def test_promotion_needs_an_approving_seal_against_production(
    reg: ModelRegistry, tiny_chain_bundle: TrainedBundle
) -> None:
    for _ in range(3):
        register_version(reg, tiny_chain_bundle.bundle_dir)
    with pytest.raises(BadInput, match="no seal"):
        reg.promote(NAME, 1, by="test")
    with pytest.raises(BadInput, match="--force needs --reason"):
        reg.promote(NAME, 1, by="test", force=True, reason="  ")
    assert reg.production(NAME) is None

    sealed = reg.put_seal(NAME, 1, make_seal(1))
    assert reg.seal(NAME, 1) == sealed and reg.get(NAME, 1).verdict == "approved"
    # the seal file is the verdict's one record: no MLflow tag to disagree with it
    assert "verdict" not in reg.client.get_model_version(NAME, "1").tags
    assert reg.promote(NAME, 1, by="test") == {"name": NAME, "stage": "production",
                                               "from": None, "to": 1}

    # v2's seal is against no baseline, but production is now @1: stale
    reg.put_seal(NAME, 2, make_seal(2))
    with pytest.raises(BadInput, match=r"no seal against the current production "
                                       r"cholecystectomy-phase@1"):
        reg.promote(NAME, 2, by="test")
    rejected = make_seal(2, "rejected", baseline=1)
    reg.put_seal(NAME, 2, rejected)
    assert reg.get(NAME, 2).verdict == "rejected"
    with pytest.raises(BadInput, match=r"seal is rejected: macro_f1.min \(macro F1 0.410 < 0.600"):
        reg.promote(NAME, 2, by="test")
    with pytest.raises(BadInput, match="only an approving seal against the current"):
        reg.move(NAME, "approved", 2, by="gate", reason="x", expected=None)

    forced = reg.promote(NAME, 2, by="test", force=True, reason="hotfix for site B")
    assert forced["to"] == 2 and reg.production(NAME) == 2
    last = reg.history(NAME)[-1]
    assert last["by"] == "test" and "hotfix for site B" in last["reason"]
    assert "forced" in last["reason"]

    # approved moves only with an approving seal, never by force
    reg.put_seal(NAME, 3, make_seal(3, baseline=2))
    with pytest.raises(BadInput, match="only by a passing seal"):
        reg.promote(NAME, 3, to="approved", force=True, reason="x", by="test")
    assert reg.promote(NAME, 3, to="approved", by="gate")["to"] == 3
    assert reg.get(NAME, 3).stages == ["candidate", "approved"]


def test_seals_are_immutable_and_validated(reg: ModelRegistry,
                                           tiny_chain_bundle: TrainedBundle) -> None:
    register_version(reg, tiny_chain_bundle.bundle_dir)
    first = reg.put_seal(NAME, 1, make_seal(1))
    changed = make_seal(1, "rejected")  # same version, baseline and field suite
    assert reg.put_seal(NAME, 1, changed) == first
    assert reg.seal(NAME, 1)["verdict"] == "approved"
    other_suite = reg.put_seal(NAME, 1, make_seal(1, "rejected", field_suite="cholecystectomy@8")
                               | {"sealed_at": "2026-11-30T03:00:00Z"})
    assert len(reg.seals(NAME, 1)) == 2 and reg.seal(NAME, 1) == other_suite
    assert reg.get(NAME, 1).verdict == "rejected"

    bad = make_seal(1) | {"checks": [{"name": "x", "passed": False, "reason": "no"}]}
    with pytest.raises(BadInput, match="verdict approved but checks failed: x"):
        reg.put_seal(NAME, 1, bad | {"field_suite": "cholecystectomy@9"})
    with pytest.raises(BadInput, match="its model is"):
        reg.put_seal(NAME, 1, make_seal(2))
    with pytest.raises(BadInput, match="missing checks"):
        reg.put_seal(NAME, 1, {k: v for k, v in make_seal(1).items() if k != "checks"})


def test_tampered_artifact_blocks_promotion_and_rollback(
    reg: ModelRegistry, tiny_chain_bundle: TrainedBundle
) -> None:
    for _ in range(3):
        register_version(reg, tiny_chain_bundle.bundle_dir)
    reg.promote(NAME, 1, by="test", force=True, reason="first")
    reg.promote(NAME, 2, by="test", force=True, reason="second")
    before = reg.history(NAME)
    registered = reg.get(NAME, 1).hashes["encoder.onnx"]
    path = tamper(reg, 1)
    with pytest.raises(ArtifactMismatch) as e:
        reg.rollback(NAME, by="test")
    assert "encoder.onnx" in str(e.value) and registered in str(e.value)
    assert sha256(path) in str(e.value)
    tamper(reg, 3, "temporal.onnx")
    with pytest.raises(ArtifactMismatch, match=r"temporal\.onnx has sha256"):
        reg.promote(NAME, 3, by="test", force=True, reason="x")
    (reg.bundle(NAME, 2, verify=False) / "extra.bin").write_bytes(b"x")
    with pytest.raises(ArtifactMismatch, match=r"extra\.bin was never registered"):
        reg.bundle(NAME, 2)
    assert reg.production(NAME) == 2 and reg.history(NAME) == before


def test_failed_parity_is_never_promotable(reg: ModelRegistry, tiny_chain_bundle: TrainedBundle,
                                           tmp_path: Path) -> None:
    bad = shutil.copytree(tiny_chain_bundle.bundle_dir, tmp_path / "bad")
    parity = json.loads((bad / "parity.json").read_text())
    parity |= {"passed": False, "max_abs_diff": 0.3, "reason": "max |Δlogit| 0.3 > 1e-4"}
    (bad / "parity.json").write_text(json.dumps(parity))
    v = register_version(reg, bad)
    assert v.unpromotable_reason and "0.3 > 1e-4" in v.unpromotable_reason
    assert v.stages == ["candidate"]  # registered all the same
    reg.put_seal(NAME, 1, make_seal(1))
    with pytest.raises(BadInput, match="never be promoted, not even with --force"):
        reg.promote(NAME, 1, by="test", force=True, reason="please")
    with pytest.raises(BadInput, match="can never be production"):
        reg.move(NAME, "production", 1, by="test", reason="x", expected=None)
    assert reg.production(NAME) is None


def test_rollback_walks_back_through_production(reg: ModelRegistry,
                                                tiny_chain_bundle: TrainedBundle) -> None:
    for _ in range(3):
        register_version(reg, tiny_chain_bundle.bundle_dir)
    with pytest.raises(BadInput, match="no earlier production"):
        reg.rollback(NAME, by="test")
    for v in (1, 2, 3):
        reg.promote(NAME, v, by="test", force=True, reason=f"release {v}")
    assert reg.rollback(NAME, by="ops") == {"name": NAME, "stage": "production",
                                            "from": 3, "to": 2}
    assert reg.rollback(NAME, by="ops")["to"] == 1
    with pytest.raises(BadInput, match="no earlier production"):
        reg.rollback(NAME, by="ops")
    assert reg.production(NAME) == 1
    prod = [(m["from"], m["to"], m["by"]) for m in reg.history(NAME)
            if m["stage"] == "production"]
    assert prod == [(None, 1, "test"), (1, 2, "test"), (2, 3, "test"), (3, 2, "ops"),
                    (2, 1, "ops")]


def test_an_alias_moved_outside_surgflow_is_a_drift_not_a_move(
        reg: ModelRegistry, tiny_chain_bundle: TrainedBundle) -> None:
    for _ in range(3):
        register_version(reg, tiny_chain_bundle.bundle_dir)
    reg.put_seal(NAME, 2, make_seal(2))
    reg.promote(NAME, 2, by="test")
    moves = reg.history(NAME)
    # what MLflow's UI pencil does: v1 (never gated) and then v3 into production
    for side in ("1", "3"):
        reg.client.set_registered_model_alias(NAME, "production", side)
        assert reg.production(NAME) == 2 and reg.pointers(NAME)["production"] == 2
        assert reg.get(NAME, "production").version == 2
        assert reg.alias_drift(NAME) == [{
            "stage": "production", "alias": int(side), "history": 2,
            "reason": f"production alias moved outside surgflow to {side}"}]
        assert reg.history(NAME) == moves  # nothing recorded as a move
    audit = reg.audit(NAME)
    assert not audit["ok"] and [d["alias"] for d in audit["alias_drift"]] == [3]
    assert [c["version"] for c in audit["versions"]] == [2]
    # a compare-and-set still sees what surgflow put there
    with pytest.raises(ConflictError, match="production points at @2 now, not @3"):
        reg.move(NAME, "production", 1, by="test", via="force", reason="x", expected=3)
    # promoting the version already there puts the alias back
    assert reg.promote(NAME, 2, by="test")["to"] == 2
    assert reg.alias_drift(NAME) == [] and reg.audit(NAME)["ok"]
    assert int(reg.client.get_registered_model(NAME).aliases["production"]) == 2


def test_a_production_line_no_promote_could_write_is_not_served(
        reg: ModelRegistry, tiny_chain_bundle: TrainedBundle) -> None:
    from surgflow.registry import history

    for _ in range(2):
        register_version(reg, tiny_chain_bundle.bundle_dir)
    reg.put_seal(NAME, 1, make_seal(1))
    reg.promote(NAME, 1, by="test")
    path = reg.settings.home / "registry" / NAME / "history.jsonl"
    history.append(path, {"stage": "production", "from": 1, "to": 2, "at": "2026-12-01T00:00:00Z",
                          "by": "someone", "via": "seal", "reason": "trust me"})
    assert reg.pointers(NAME)["production"] == 2
    version, why = reg.servable(NAME)
    assert version == 1 and "no seal" in why
    assert reg.audit(NAME)["production_unservable"] == why


RACER = """
import sys, time, json
from pathlib import Path
from surgflow.errors import ConflictError
from surgflow.registry import ModelRegistry
reg = ModelRegistry()
reg.get("{name}", 1)  # connected and warm before the start line
d = Path(sys.argv[1]); me = sys.argv[2]
(d / f"ready-{{me}}").touch()
while not (d / "go").exists():
    time.sleep(0.005)
try:
    out = reg.move("{name}", "production", int(me), by=f"racer-{{me}}", reason="race",
                   expected=None)
    print(json.dumps({{"won": out}}))
except ConflictError as e:
    print(json.dumps({{"lost": str(e)}}))
"""


def test_two_processes_racing_for_production_leave_one_winner(
    reg: ModelRegistry, tiny_chain_bundle: TrainedBundle, tmp_path: Path
) -> None:
    for v in (1, 2):
        register_version(reg, tiny_chain_bundle.bundle_dir)
        reg.put_seal(NAME, v, make_seal(v))
    script = RACER.format(name=NAME)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), me],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ))
             for me in ("1", "2")]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{me}").exists() for me in ("1", "2")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
            p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.02)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    winners = [r["won"] for r in results if "won" in r]
    losers = [r["lost"] for r in results if "lost" in r]
    assert len(winners) == 1 and len(losers) == 1, results
    assert "another move happened meanwhile" in losers[0]
    assert reg.production(NAME) == winners[0]["to"]
    prod = [m for m in reg.history(NAME) if m["stage"] == "production"]
    assert [(m["from"], m["to"]) for m in prod] == [(None, winners[0]["to"])]


def test_remote_store_bundle_is_downloaded_verified_and_cached(
    reg: ModelRegistry, tiny_chain_bundle: TrainedBundle, surgflow_home: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    v = register_version(reg, tiny_chain_bundle.bundle_dir)
    stored = reg.bundle(NAME, 1)  # the local store's own directory
    monkeypatch.setattr("surgflow.registry.artifacts.local_path", lambda uri: None)
    cached = reg.bundle(NAME, 1)
    assert cached == surgflow_home / "registry" / "cache" / NAME / "1"
    assert {p.name: sha256(p) for p in cached.iterdir()} == v.hashes
    # a damaged cache is fetched again; a damaged store is refused
    (cached / "golden.npz").write_bytes(b"junk")
    assert sha256(reg.bundle(NAME, 1) / "golden.npz") == v.hashes["golden.npz"]
    with open(stored / "encoder.onnx", "ab") as f:
        f.write(b"\x00")
    shutil.rmtree(cached)
    with pytest.raises(ArtifactMismatch, match=r"encoder\.onnx has sha256"):
        reg.bundle(NAME, 1)
    assert not cached.exists()
