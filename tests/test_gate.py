"""The regression gate: pure decisions on metric dicts, seals, and the gate block."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from surgflow.errors import BadInput, ConfigError
from surgflow.evaluation.checks import gate_checks, make_seal, verdict
from surgflow.evaluation.metrics import LabelledVideo, evaluate
from surgflow.evaluation.thresholds import GateSpec, parse_gate
from surgflow.training.recipe import parse_recipe

LABELS = ["A", "B", "C"]
TRUTH = np.repeat([0, 1, 2], 20)  # 60 frames, 1 fps: A, B, C for 20 s each
ONNX = {"sha256": "ab" * 32, "max_abs_diff": 3e-6, "top1_agreement": 1.0, "passed": True}
SOURCES = ["hospital-a", "hospital-a", "hospital-b", "hospital-b"]


def wrong(k: int, *, offset: int = 0) -> np.ndarray:
    """TRUTH with ``k`` frames of phase B predicted as C (starting ``offset`` frames into B)."""
    pred = TRUTH.copy()
    pred[20 + offset:20 + offset + k] = 2
    return pred


def suite(errors: list[int]) -> dict:
    """evaluate() of four field videos, video i with errors[i] B->C confusions mid-phase."""
    videos = [LabelledVideo(f"v{i}", SOURCES[i], 1.0, TRUTH, wrong(k, offset=12 - k // 2))
              for i, k in enumerate(errors)]
    return evaluate(videos, LABELS, window_s=0)


def names(checks, passed=None):
    return [c["name"] for c in checks if passed is None or c["passed"] is passed]


def spec(**gate) -> GateSpec:
    """The gate block of a recipe, as the gate (and whoever loads a recipe to train) reads it."""
    recipe = parse_recipe({"name": "g", "data": {"sources": ["cholecystectomy"]}, "gate": gate})
    return parse_gate(recipe.gate, "recipe g")


def test_first_model_gets_minimums_and_parity_only():
    checks = gate_checks(spec(min={"macro_f1": 0.6, "accuracy": 0.9}), suite([0, 2, 0, 2]),
                         onnx=ONNX)
    assert names(checks) == ["macro_f1.min", "accuracy.min", "onnx.parity"]
    assert verdict(checks) == "approved"
    c = checks[0]
    assert set(c) == {"name", "value", "baseline", "threshold", "passed", "reason"}
    assert c["threshold"] == 0.6 and c["baseline"] is None
    assert c["reason"].startswith("macro F1 0.9") and ">= minimum 0.600" in c["reason"]


def test_a_worse_candidate_is_rejected_naming_the_failing_checks():
    production, candidate = suite([0, 0, 0, 0]), suite([6, 6, 6, 6])
    checks = gate_checks(spec(), candidate, baseline=production, onnx=ONNX)
    assert verdict(checks) == "rejected"
    failed = {c["name"]: c for c in checks if not c["passed"]}
    assert {"macro_f1.regression", "accuracy.regression", "macro_f1.source.hospital-a",
            "macro_f1.source.hospital-b", "macro_f1.bootstrap"} <= set(failed)
    r = failed["macro_f1.regression"]
    assert r["baseline"] == 1.0 and r["threshold"] == 0.02 and r["value"] < 0.98
    assert "beyond the allowed drop of 0.020" in r["reason"]
    assert "may be worse than production" in failed["macro_f1.bootstrap"]["reason"]
    # the same candidate against itself passes every check
    assert verdict(gate_checks(spec(), candidate, baseline=candidate, onnx=ONNX)) == "approved"


def test_a_hospital_that_gets_worse_blocks_approval_even_when_the_average_improves():
    production = suite([8, 8, 0, 0])
    candidate = suite([0, 0, 4, 4])  # hospital-a much better, hospital-b a little worse
    assert candidate["summary"]["macro_f1"] > production["summary"]["macro_f1"]
    gate = spec(bootstrap=None)
    checks = gate_checks(gate, candidate, baseline=production, onnx=ONNX)
    assert names(checks, passed=False) == ["macro_f1.source.hospital-b"]
    [bad] = [c for c in checks if not c["passed"]]
    assert bad["reason"].startswith("macro F1 on hospital-b 0.933 vs production on hospital-b "
                                    "1.000 (-0.067; beyond the allowed drop of 0.050)")
    assert verdict(checks) == "rejected"
    # with the per-source check switched off, the same comparison would have passed
    lax = spec(bootstrap=None, source_max_drop={})
    assert verdict(gate_checks(lax, candidate, baseline=production, onnx=ONNX)) == "approved"


def test_relative_drop_per_named_metric():
    production, candidate = suite([0, 0, 0, 0]), suite([2, 2, 2, 2])
    gate = spec(max_drop={}, max_relative_drop={"relaxed_macro_f1": 0.01}, source_max_drop={},
                bootstrap=None)
    checks = gate_checks(gate, candidate, baseline=production, onnx=ONNX)
    assert names(checks) == ["relaxed_macro_f1.relative_regression", "onnx.parity"]
    assert not checks[0]["passed"] and "beyond the allowed drop of 1.0%" in checks[0]["reason"]


def test_a_temporal_stage_that_makes_the_chain_worse_fails():
    chain, encoder = suite([6, 6, 6, 6]), suite([2, 2, 2, 2])
    checks = gate_checks(spec(), chain, encoder=encoder, onnx=ONNX)
    [c] = [c for c in checks if c["name"] == "macro_f1.chain_vs_encoder"]
    assert not c["passed"] and c["baseline"] == pytest.approx(encoder["summary"]["macro_f1"],
                                                              abs=1e-6)
    assert "the temporal stage makes the chain worse" in c["reason"]
    assert verdict(gate_checks(spec(), encoder, encoder=chain, onnx=ONNX)) == "approved"
    assert "macro_f1.chain_vs_encoder" not in names(
        gate_checks(spec(chain_vs_encoder=False), chain, encoder=encoder, onnx=ONNX))


def test_a_better_encoder_that_lowers_the_swapped_chain_is_rejected():
    """Candidate = production's temporal stage on a new encoder. The new encoder beats
    production's encoder on its own, but the chain it makes is worse than production's chain:
    the gate compares whole chains, so it rejects."""
    production_chain = suite([1, 1, 1, 1])
    candidate_encoder = suite([3, 3, 3, 3])   # better than production's encoder alone ...
    production_encoder = suite([9, 9, 9, 9])
    candidate_chain = suite([5, 5, 5, 5])     # ... yet the swapped chain scores lower
    assert candidate_encoder["summary"]["macro_f1"] > production_encoder["summary"]["macro_f1"]
    checks = gate_checks(spec(), candidate_chain, baseline=production_chain,
                         encoder=candidate_encoder, onnx=ONNX)
    assert verdict(checks) == "rejected"
    assert {"macro_f1.regression", "macro_f1.chain_vs_encoder"} <= set(names(checks, False))


def test_failed_parity_rejects():
    checks = gate_checks(spec(), suite([0, 0, 0, 0]), onnx={**ONNX, "passed": False,
                                                            "max_abs_diff": 0.3})
    assert names(checks, passed=False) == ["onnx.parity"]
    assert "failed" in checks[-1]["reason"]


def test_same_inputs_same_seal():
    production, candidate = suite([2, 0, 3, 1]), suite([1, 1, 2, 2])
    at = datetime(2026, 11, 30, 2, 41, 7, 123456, tzinfo=UTC)

    def seal():
        checks = gate_checks(spec(), candidate, baseline=production, onnx=ONNX)
        return make_seal(model="cholecystectomy-phase@4", baseline="cholecystectomy-phase@3",
                         field_suite="cholecystectomy@7", checks=checks, onnx=ONNX, sealed_at=at)

    s = seal()
    assert s == seal()  # the bootstrap is seeded
    assert list(s) == ["model", "verdict", "baseline", "field_suite", "sealed_at", "checks",
                       "onnx"]
    assert s["sealed_at"] == "2026-11-30T02:41:07Z"
    assert s["onnx"] == ONNX
    boot = next(c for c in s["checks"] if c["name"] == "macro_f1.bootstrap")
    assert "95% CI" in boot["reason"] and "1000 paired resamples" in boot["reason"]
    assert make_seal(model="m@1", baseline=None, field_suite=None, checks=[], onnx=None,
                     sealed_at=at)["verdict"] == "rejected"  # nothing checked, nothing approved


def test_gate_block_old_and_new_spellings():
    old = spec(min_macro_f1=0.6, max_regression=0.05)
    assert old.minimums() == {"macro_f1": 0.6}
    assert old.drops() == {"accuracy": 0.05, "macro_f1": 0.05}
    new = spec(min={"macro_f1": 0.6, "relaxed_accuracy": 0.7}, max_drop={"macro_f1": 0.01})
    assert new.minimums() == {"macro_f1": 0.6, "relaxed_accuracy": 0.7}
    assert new.drops() == {"macro_f1": 0.01}
    with pytest.raises(ConfigError, match=r"contradicts min\.macro_f1"):
        spec(min_macro_f1=0.5, min={"macro_f1": 0.6})


@pytest.mark.parametrize("gate", [{"min": {"f1_score": 0.6}}, {"max_drop": {"auc": 0.1}},
                                  {"source_max_drop": {"dice": 0.1}},
                                  {"bootstrap": {"metric": "kappa"}},
                                  {"chain_vs_encoder_metrics": ["edit_score"]}])
def test_gate_block_naming_an_unknown_metric_is_bad_input(gate):
    with pytest.raises(ConfigError, match=r"unknown metric .*; known: accuracy, macro_precision")\
            as e:
        spec(**gate)
    assert isinstance(e.value, BadInput)  # the CLI exits 2


def test_recipe_file_with_an_unknown_gate_metric_exits_2(tmp_path):
    from tests.cli_helpers import run_cli

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndata: {sources: [cholecystectomy]}\ngate: {min: {f2: 0.5}}\n")
    r = run_cli("train", str(bad), json=True, check=False, timeout=120)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert "unknown metric 'f2'" in r.stderr and "known: accuracy" in r.stderr


# -- gate_version on real chain bundles and the embedded MLflow registry ----------------------

NAME = "cholecystectomy-phase"


def _register(reg, trained, bundle_dir, gate: dict):
    from surgflow import tracking

    c = reg.client
    run = c.create_run(tracking.experiment_id(c, "surgflow/cholecystectomy", reg.settings))
    recipe = trained.recipe.model_dump(mode="json") | {"gate": gate}
    return reg.register(procedure="cholecystectomy", bundle_dir=bundle_dir,
                        run_id=run.info.run_id, recipe_name=trained.recipe.name, recipe=recipe,
                        recipe_path=None, dataset_versions=["cholecystectomy@1"],
                        code_version="git:test", metrics={})


def test_gate_version_on_real_bundles(surgflow_home, tiny_chain_bundle, tmp_path):
    import json
    import shutil
    from pathlib import Path

    from surgflow.data.pins import pin
    from surgflow.evaluation.gate import gate_version
    from surgflow.registry import ModelRegistry

    # the labelled dataset the bundle was trained on; its val videos become the field suite
    shutil.copytree(tiny_chain_bundle.home / "datasets", surgflow_home / "datasets")
    reg = ModelRegistry()
    bundle = tiny_chain_bundle.bundle_dir
    v1 = _register(reg, tiny_chain_bundle, bundle,
                   {"min": {"macro_f1": 0.0}, "chain_vs_encoder": False})

    unpinned = gate_version(reg, NAME, v1.version)
    assert unpinned["verdict"] == "rejected" and unpinned["field_suite"] is None
    assert unpinned["checks"][0]["name"] == "field_suite"
    assert unpinned["checks"][0]["reason"].startswith(
        "no field suite pinned for cholecystectomy; run surgflow data pin cholecystectomy@N")
    assert reg.seal(NAME, v1.version) is None  # nothing sealed without a field suite

    pin(surgflow_home, "cholecystectomy", 1)
    first = gate_version(reg, NAME, v1.version)
    assert first["verdict"] == "approved", first["checks"]
    assert (first["model"], first["baseline"], first["field_suite"]) == (
        f"{NAME}@1", None, "cholecystectomy@1")
    assert [c["name"] for c in first["checks"]] == ["macro_f1.min", "onnx.parity"]
    assert first["onnx"]["passed"] is True and len(first["onnx"]["sha256"]) == 64
    assert reg.pointers(NAME)["approved"] == 1
    report = Path(first.pop("report_path"))
    assert report.is_file() and "data:image/png;base64," in report.read_text()
    assert reg.seal(NAME, 1) == first
    run_files = [f.path for f in reg.client.list_artifacts(v1.run_id, "gate")]
    assert run_files == [f"gate/{report.name}"]
    # the same inputs again: the stored seal, sealed_at and all; a seal never changes
    assert {**gate_version(reg, NAME, 1), "report_path": None} == {**first, "report_path": None}
    forged = {**first, "verdict": "rejected", "checks": [{**first["checks"][0], "passed": False}]}
    assert reg.put_seal(NAME, 1, forged) == first

    # a second candidate against production: the same chain, so nothing regresses
    reg.promote(NAME, 1, by="test")
    v2 = _register(reg, tiny_chain_bundle, bundle, {"min": {"macro_f1": 0.0}})
    second = gate_version(reg, NAME, v2.version)
    by_name = {c["name"]: c for c in second["checks"]}
    assert second["baseline"] == f"{NAME}@1"
    for name in ("macro_f1.regression", "accuracy.regression",
                 "macro_f1.source.hospital-a", "macro_f1.bootstrap"):
        assert by_name[name]["passed"], by_name[name]
    assert by_name["macro_f1.regression"]["value"] == by_name["macro_f1.regression"]["baseline"]
    cve = by_name["macro_f1.chain_vs_encoder"]  # the chain against its own encoder alone
    assert cve["passed"] == (cve["value"] >= cve["baseline"])
    assert second["verdict"] == ("approved" if cve["passed"] else "rejected")

    # a chain whose classes are not the procedure's, in order: bad input, nothing sealed
    odd = tmp_path / "odd-bundle"
    shutil.copytree(bundle, odd)
    spec = json.loads((odd / "chain.json").read_text())
    spec["labels"] = spec["labels"][::-1]
    (odd / "chain.json").write_text(json.dumps(spec))
    v3 = _register(reg, tiny_chain_bundle, odd, {})
    with pytest.raises(BadInput, match="predicts classes"):
        gate_version(reg, NAME, v3.version)
    assert reg.seal(NAME, v3.version) is None
