"""The regression gate: pure decisions on metric dicts, seals, and the gate block."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from surgflow.errors import BadInput, ConfigError
from surgflow.evaluation.checks import gate_checks, make_seal, verdict
from surgflow.evaluation.metrics import LabelledVideo, evaluate
from surgflow.training.recipe import GateSpec, parse_recipe

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
    return parse_recipe({"name": "g", "data": {"sources": ["cholecystectomy"]},
                         "gate": gate}).gate


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
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndata: {sources: [cholecystectomy]}\ngate: {min: {f2: 0.5}}\n")
    r = subprocess.run([sys.executable, "-m", "surgflow", "train", str(bad), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert "unknown metric 'f2'" in r.stderr and "known: accuracy" in r.stderr
