"""Release policy on plain data: what a run registers as metrics, and which candidate wins."""

from __future__ import annotations

import pytest

from surgflow.errors import BadInput
from surgflow.registry.release import field_score, pick_winner, run_metrics


def check(name: str, value: float | None, passed: bool = True) -> dict:
    return {"name": name, "value": value, "baseline": None, "threshold": 0.0, "passed": passed,
            "reason": "…"}


def seal(*checks: dict, verdict: str = "approved") -> dict:
    return {"verdict": verdict, "checks": list(checks)}


def candidate(model: str | None, s: dict | None, recipe: str = "r") -> dict:
    return {"model": model, "seal": s, "recipe": recipe}


def test_field_score_reads_the_whole_suite_value_not_a_per_source_or_bootstrap_check() -> None:
    per_source_first = seal(check("macro_f1.source.hospital-a", 0.99),
                            check("macro_f1.bootstrap", -0.01),
                            check("relaxed_macro_f1.min", 0.95),
                            check("macro_f1.regression", 0.7))
    assert field_score(per_source_first) == 0.7
    assert field_score(seal(check("macro_f1.min", 0.6), check("macro_f1.regression", 0.6))) == 0.6
    assert field_score(seal(check("macro_f1.chain_vs_encoder", 0.5))) == 0.5
    assert field_score(seal(check("accuracy.min", 0.9))) is None
    assert field_score(seal(check("macro_f1.min", None, passed=False))) is None
    assert field_score(None) is None
    assert field_score(seal(check("accuracy.min", 0.9)), metric="accuracy") == 0.9


def test_the_best_approved_candidate_wins_per_model_name() -> None:
    rows = [
        candidate("cholecystectomy-phase@3", seal(check("macro_f1.min", 0.70)), "a"),
        candidate("cholecystectomy-phase@4", seal(check("macro_f1.min", 0.80)), "b"),
        candidate("cholecystectomy-phase@5", seal(check("macro_f1.min", 0.95),
                                                  verdict="rejected"), "c"),
        candidate("appendectomy-phase@1", seal(check("macro_f1.min", 0.40)), "d"),
        candidate(None, None, "failed"),
    ]
    got = pick_winner(rows)
    assert {name: c["recipe"] for name, c in got.items()} == {
        "cholecystectomy-phase": "b", "appendectomy-phase": "d"}
    assert got["cholecystectomy-phase"] is rows[1], "the caller's own row comes back"


def test_a_per_source_score_never_decides_the_winner() -> None:
    # a prefix match would read b's per-source 0.99 and pick it over a's better whole-suite F1
    a = candidate("m-phase@1", seal(check("macro_f1.min", 0.8)), "a")
    b = candidate("m-phase@2", seal(check("macro_f1.source.x", 0.99),
                                    check("macro_f1.regression", 0.6)), "b")
    assert pick_winner([b, a])["m-phase"]["recipe"] == "a"


def test_unscored_candidates_rank_last_and_ties_go_to_the_first() -> None:
    unscored = candidate("m-phase@1", seal(check("accuracy.min", 0.9)), "unscored")
    scored = candidate("m-phase@2", seal(check("macro_f1.min", 0.1)), "scored")
    assert pick_winner([unscored, scored])["m-phase"]["recipe"] == "scored"
    twin = candidate("m-phase@3", seal(check("macro_f1.min", 0.1)), "twin")
    assert pick_winner([scored, twin])["m-phase"]["recipe"] == "scored"
    only = candidate("m-phase@4", seal(check("accuracy.min", 0.9)), "only")
    assert pick_winner([only])["m-phase"]["recipe"] == "only"


def test_the_seal_not_a_copied_verdict_decides_approval() -> None:
    row = candidate("m-phase@1", seal(check("macro_f1.min", 0.9), verdict="rejected"))
    row["verdict"] = "approved"
    assert pick_winner([row]) == {}


def test_a_bad_model_reference_is_an_error_naming_it() -> None:
    with pytest.raises(BadInput, match="no-version"):
        pick_winner([candidate("no-version", seal(check("macro_f1.min", 0.9)))])


def test_run_metrics_are_every_stages_final_validation_numbers() -> None:
    record = {"result": {"stages": {
        "encoder": {"final": {"val": {"accuracy": 0.5, "loss": 1, "confusion": [[1]],
                                      "ok": True}}},
        "temporal": {"final": {"val": {"macro_f1": 0.25}}},
        "unfinished": {},
    }}}
    assert run_metrics(record) == {"encoder.val.accuracy": 0.5, "encoder.val.loss": 1,
                                   "temporal.val.macro_f1": 0.25}
    assert run_metrics({"result": None}) == {}
