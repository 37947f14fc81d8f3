"""The regression gate's decisions and seals, pure: metric dicts and a gate block in, checks out.

Inputs are :func:`surgflow.evaluation.metrics.evaluate` results (``summary``, ``per_source``,
``per_video``) of the candidate chain, of the production chain on the same field videos, and
of the candidate's encoder alone. Checks, in order:

``<metric>.min``                 candidate ≥ the gate's absolute minimum
``<metric>.chain_vs_encoder``    the chain ≥ its own encoder alone (a temporal stage that makes
                                 things worse fails here)
``<metric>.regression``          candidate ≥ production − max_drop           (production only)
``<metric>.relative_regression`` candidate ≥ production × (1 − max_relative_drop)
``<metric>.source.<source>``     the same per source: no hospital worse by more than allowed
``<metric>.bootstrap``           paired bootstrap over videos: the CI's lower bound of
                                 candidate − production ≥ −margin (non-inferiority)
``privacy.recall``               out-of-body frames blacked out ≥ min_recall  (detectors)
``privacy.in_body_lost``         in-body frames called out of the body ≤ max_lost  (detectors)
``onnx.parity``                  the exported ONNX chain matches the torch chain

The first model of a procedure (no production) gets the minimums, chain-vs-encoder and parity.
A seal approves only when every check passed; each check says why in ``reason``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime

from surgflow.evaluation.metrics import paired_bootstrap
from surgflow.evaluation.thresholds import GateSpec


def check(name: str, value: float | None, baseline: float | None, threshold: float | None,
          passed: bool, reason: str) -> dict:
    """One check as seals hold it (SPEC §7)."""
    return {"name": name, "value": _num(value), "baseline": _num(baseline),
            "threshold": _num(threshold), "passed": bool(passed), "reason": reason}


def minimum_checks(spec: GateSpec, summary: Mapping[str, float | None]) -> list[dict]:
    out = []
    for metric, floor in spec.minimums().items():
        v = summary.get(metric)
        if v is None:
            out.append(check(f"{metric}.min", None, None, floor, False,
                             f"{title(metric)} could not be computed on the field suite"))
            continue
        ok = v >= floor
        out.append(check(f"{metric}.min", v, None, floor, ok,
                         f"{title(metric)} {v:.3f} {'>=' if ok else '<'} minimum {floor:.3f}"))
    return out


def chain_vs_encoder_checks(spec: GateSpec, chain: Mapping[str, float | None],
                            encoder: Mapping[str, float | None]) -> list[dict]:
    if not spec.chain_vs_encoder:
        return []
    out = []
    for metric in spec.chain_vs_encoder_metrics:
        c, e = chain.get(metric), encoder.get(metric)
        if c is None or e is None:
            out.append(check(f"{metric}.chain_vs_encoder", c, e, 0.0, False,
                             f"{title(metric)} could not be computed for the chain or its "
                             "encoder on the field suite"))
            continue
        ok = c >= e
        reason = (f"chain {title(metric)} {c:.3f} >= its encoder alone {e:.3f}" if ok else
                  f"the temporal stage makes the chain worse: chain {title(metric)} {c:.3f} < "
                  f"its encoder alone {e:.3f} ({c - e:+.3f})")
        out.append(check(f"{metric}.chain_vs_encoder", c, e, 0.0, ok, reason))
    return out


def regression_checks(spec: GateSpec, candidate: Mapping[str, float | None],
                      baseline: Mapping[str, float | None], against: str) -> list[dict]:
    out = []
    for metric, drop in spec.drops().items():
        out.append(_drop_check(f"{metric}.regression", metric, candidate.get(metric),
                               baseline.get(metric), drop, against))
    for metric, rel in spec.max_relative_drop.items():
        c, b = candidate.get(metric), baseline.get(metric)
        name = f"{metric}.relative_regression"
        if c is None or b is None:
            out.append(check(name, c, b, rel, False, _missing(metric, c, against)))
            continue
        change = (c - b) / b if b > 0 else 0.0
        ok = c >= b * (1 - rel)
        out.append(check(name, c, b, rel, ok,
                         f"{title(metric)} {c:.3f} vs {against} {b:.3f}: {change:+.1%} "
                         f"({'within' if ok else 'beyond'} the allowed drop of {rel:.1%})"))
    return out


def source_checks(spec: GateSpec, candidate: Mapping[str, Mapping], baseline: Mapping[str, Mapping],
                  against: str) -> list[dict]:
    """Per-source non-inferiority: every source the field suite holds, for each metric."""
    out = []
    for metric, drop in spec.source_max_drop.items():
        for source in sorted(set(candidate) | set(baseline)):
            c = candidate.get(source, {}).get(metric)
            b = baseline.get(source, {}).get(metric)
            out.append(_drop_check(f"{metric}.source.{source}", metric, c, b, drop,
                                   f"{against} on {source}", what=f"{title(metric)} on {source}"))
    return out


def bootstrap_check(spec: GateSpec, candidate: Mapping, baseline: Mapping,
                    labels: list[str]) -> list[dict]:
    """The paired bootstrap over field videos of the gate's metric (candidate − production)."""
    b = spec.bootstrap
    if b is None:
        return []
    margin = b.margin if b.margin is not None else spec.drops().get(b.metric, spec.max_regression)
    ci = paired_bootstrap(candidate["per_video"], baseline["per_video"], labels, b.metric,
                          resamples=b.resamples, confidence=b.confidence, seed=b.seed)
    name, low = f"{b.metric}.bootstrap", ci["low"]
    what = (f"{title(b.metric)} difference {ci['difference']:+.3f}, {b.confidence:.0%} CI "
            f"[{low:+.3f}, {ci['high']:+.3f}] over {ci['videos']} videos "
            f"({b.resamples} paired resamples, seed {b.seed})")
    if math.isnan(low):
        return [check(name, None, None, -margin, False, f"{what}: no video to resample")]
    ok = low >= -margin
    return [check(name, low, None, -margin, ok,
                  f"{what}: lower bound {'>=' if ok else '<'} {-margin:+.3f}"
                  + ("" if ok else "; the candidate may be worse than production"))]


def privacy_checks(spec: GateSpec, scores: Mapping | None) -> list[dict]:
    """An out-of-body detector's checks on :func:`surgflow.evaluation.privacy.privacy_scores`
    of the field suite (None: the gate block asks for none)."""
    p = spec.privacy
    if p is None or scores is None:
        return []
    margin = f"with the {p.margin_s:g} s margin"
    recall, lost = scores.get("recall"), scores.get("lost")
    out = []
    if recall is None:
        out.append(check("privacy.recall", None, None, p.min_recall, False,
                         "the field suite holds no out-of-body frame to measure recall on"))
    else:
        ok = recall >= p.min_recall
        out.append(check("privacy.recall", recall, None, p.min_recall, ok,
                         f"{recall:.4%} of {scores['out_of_body_frames']} out-of-body frames "
                         f"blacked out {margin} ({scores['missed_frames']} missed; "
                         f"{'>=' if ok else '<'} {p.min_recall:.2%})"))
    if lost is None:
        out.append(check("privacy.in_body_lost", None, None, p.max_lost, False,
                         "the field suite holds no in-body frame to measure loss on"))
    else:
        ok = lost <= p.max_lost
        out.append(check("privacy.in_body_lost", lost, None, p.max_lost, ok,
                         f"{lost:.2%} of {scores['in_body_frames']} in-body frames called out "
                         f"of the body beyond {p.tolerance_s:g} s of a true range "
                         f"({'<=' if ok else '>'} {p.max_lost:.2%}; {scores['lost_raw']:.2%} "
                         f"within it included); {scores['blacked_out']:.2%} blacked out "
                         f"{margin}"))
    return out


def parity_check(onnx: Mapping | None) -> list[dict]:
    if onnx is None:
        return [check("onnx.parity", None, None, None, False, "the chain has no parity record")]
    ok = bool(onnx.get("passed"))
    diff, top1 = onnx.get("max_abs_diff"), onnx.get("top1_agreement")
    return [check("onnx.parity", diff, None, None, ok,
                  f"ONNX vs torch on the golden clips: max |Δlogit| {diff:.2g}, top-1 agreement "
                  f"{top1:.3f} ({'passed' if ok else 'failed'})")]


def gate_checks(spec: GateSpec, candidate: Mapping, *, baseline: Mapping | None = None,
                encoder: Mapping | None = None, against: str = "production",
                onnx: Mapping | None = None, check_parity: bool = True,
                privacy: Mapping | None = None) -> list[dict]:
    """Every check of the module docstring, in order. ``encoder`` None: the chain has no
    temporal stage (it is its encoder). ``baseline`` None: the first model of a procedure.
    ``privacy``: the candidate's privacy scores, for a gate block with a privacy section."""
    out = minimum_checks(spec, candidate["summary"])
    if encoder is not None:
        out += chain_vs_encoder_checks(spec, candidate["summary"], encoder["summary"])
    if baseline is not None:
        out += regression_checks(spec, candidate["summary"], baseline["summary"], against)
        out += source_checks(spec, candidate["per_source"], baseline["per_source"], against)
        out += bootstrap_check(spec, candidate, baseline, list(candidate["labels"]))
    out += privacy_checks(spec, privacy)
    if check_parity:
        out += parity_check(onnx)
    return out


def no_field_suite_check(reason: str) -> dict:
    """The rejecting check of a gate that has no field suite to run on."""
    return check("field_suite", None, None, None, False, reason)


def verdict(checks: list[dict]) -> str:
    return "approved" if checks and all(c["passed"] for c in checks) else "rejected"


def make_seal(*, model: str, baseline: str | None, field_suite: str | None, checks: list[dict],
              onnx: Mapping | None, sealed_at: datetime | None = None) -> dict:
    """The seal of SPEC §7. ``onnx``: ``{"sha256", "max_abs_diff", "top1_agreement",
    "passed"}`` of the candidate's exported chain."""
    at = (sealed_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return {
        "model": model, "verdict": verdict(checks), "baseline": baseline,
        "field_suite": field_suite, "sealed_at": at.isoformat().replace("+00:00", "Z"),
        "checks": list(checks),
        "onnx": None if onnx is None else {k: onnx.get(k) for k in
                                           ("sha256", "max_abs_diff", "top1_agreement", "passed")},
    }


def title(metric: str) -> str:
    """A metric's name for people: ``relaxed_macro_f1`` -> ``relaxed macro F1``."""
    words = metric.replace("_", " ")
    for short, long in (("f1", "F1"), ("macro jaccard", "macro Jaccard")):
        words = words.replace(short, long)
    return words


def _drop_check(name: str, metric: str, c: float | None, b: float | None, drop: float,
                against: str, what: str | None = None) -> dict:
    what = what or title(metric)
    if c is None or b is None:
        return check(name, c, b, drop, False, _missing(metric, c, against))
    ok = c >= b - drop
    return check(name, c, b, drop, ok,
                 f"{what} {c:.3f} vs {against} {b:.3f} ({c - b:+.3f}; "
                 f"{'within' if ok else 'beyond'} the allowed drop of {drop:.3f})")


def _missing(metric: str, c: float | None, against: str) -> str:
    who = "the candidate" if c is None else against
    return f"{title(metric)} could not be computed for {who}"


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)
