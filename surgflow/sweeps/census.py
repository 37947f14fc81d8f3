"""What a study holds, read off its trials: pure functions over Optuna's frozen trials.

How many trials a sweep still has to start (:func:`remaining`), a finished run's value for
the study (:func:`chain_value`) and the sweep's summary (:func:`summarise`): every trial, the
counts, the best complete trial and the recipe's own, trial 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
          "WAITING": "waiting"}


def chain_value(record: Mapping[str, Any], metric: str) -> float:
    """A finished run's value for the study: the chain's final validation ``metric``, which is
    the temporal stage's when the run has one, else the encoder's."""
    stages = (record.get("result") or {}).get("stages") or {}
    stage = "temporal" if "temporal" in stages else "clip"
    return float(stages[stage]["final"]["val"][metric])


def superseded(trials: list[Any]) -> set[int]:
    """Numbers of failed trials queued again as a later trial (``retry_history``, the system
    attribute Optuna's RetryHeartbeatStaleTrialCallback keeps on the retry)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def state_of(trial: Any) -> str:
    """The trial's state as the summary names it (``complete``, ``pruned``, ``failed``…)."""
    return STATES.get(trial.state.name, trial.state.name.lower())


def remaining(trials: list[Any], target: int) -> int:
    """How many more trials to start so that the study ends with ``target`` finished ones:
    running trials count (they will finish), waiting ones do not (they are what ``ask`` hands
    out next), and a failed trial queued again counts only through its retry."""
    gone = superseded(trials)
    taken = [t for t in trials if state_of(t) in ("complete", "pruned", "running")
             or (state_of(t) == "failed" and t.number not in gone)]
    return target - len(taken)


def summarise(trials: list[Any], *, study: str, storage: str, metric: str, direction: str,
              ran: list[int]) -> dict[str, Any]:
    """The sweep's summary: every trial, the counts, the best complete trial and the recipe's
    own (trial 0's) value, and whether the best beats it."""
    rows = [row(t) for t in sorted(trials, key=lambda t: t.number)]
    gone = superseded(trials)
    complete = [r for r in rows if r["state"] == "complete"]
    sign = 1.0 if direction == "maximize" else -1.0
    best_row = max(complete, key=lambda r: (sign * r["value"], -r["number"]), default=None)
    baseline_rows = [r for r in rows if r["baseline"] and r["number"] not in gone]
    baseline = ({k: baseline_rows[-1][k] for k in ("number", "state", "value", "run_id")}
                if baseline_rows else None)
    best = None
    if best_row is not None:
        best = {k: best_row[k] for k in ("number", "value", "params", "run_id")} | {
            "model": None, "verdict": None}
    beats = None
    if best is not None and baseline is not None and baseline["state"] == "complete":
        beats = sign * (best["value"] - baseline["value"]) > 0
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES.values()}
    return {"study": study, "storage": storage, "metric": metric, "direction": direction,
            "trials": rows, "counts": counts, "ran": ran, "best": best, "baseline": baseline,
            "beats_baseline": beats}


def row(t: Any) -> dict[str, Any]:
    """One trial as the summary lists it."""
    pruned = t.user_attrs.get("pruned")
    return {"number": t.number, "state": state_of(t), "value": t.value, "params": t.params,
            "run_id": t.user_attrs.get("run_id"), "baseline": bool(t.user_attrs.get("baseline")),
            "retry_of": t.system_attrs.get("failed_trial"),
            "pruned_at": pruned.get("step") if isinstance(pruned, dict) else None,
            "error": t.user_attrs.get("error")}


def first_error(rows: list[dict[str, Any]]) -> str:
    """The reason the first failed trial of the summary ``rows`` gives."""
    return next((r["error"] for r in rows if r.get("error")), "(none recorded)")
