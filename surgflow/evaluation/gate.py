"""Gating a registered chain: run it, its encoder alone and production on the field suite, the
way production runs them, decide (:mod:`surgflow.evaluation.checks`), seal, report.

Every chain is scored as a whole: a candidate that swaps one stage into production's chain is
simply that chain. Ground truth is the pinned field suite (:mod:`surgflow.data.pins`). The
same version, baseline and field suite always give the same seal: an existing seal is returned
as stored, without running anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from surgflow.config import Settings
from surgflow.data.pins import FieldSuite, NoFieldSuite, field_suite
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.errors import BadInput, ConflictError
from surgflow.evaluation import checks as C
from surgflow.evaluation.metrics import LabelledVideo, evaluate
from surgflow.evaluation.privacy import privacy_scores
from surgflow.evaluation.thresholds import GateSpec, parse_gate

log = logging.getLogger(__name__)

GATE_BY = "surgflow-gate"


def gate_version(registry: Any, name: str, version: int | str, *,
                 settings: Settings | None = None) -> dict:
    """Seal ``name@version`` against the current production on the pinned field suite.

    Returns the seal (SPEC §7) plus ``report_path`` (the comparison report, or None). An
    approving seal moves the ``approved`` pointer. Without a pinned field suite the verdict is
    rejected with that reason and nothing is stored (a seal names its field suite). BadInput:
    the candidate's classes differ from its procedure's taxonomy, or its recipe's gate block
    is invalid.
    """
    settings = settings or registry.settings
    home = settings.home
    mv = registry.get(name, version)
    procedure = mv.procedure or name.removesuffix("-phase")
    production = registry.production(name)
    baseline_ref = f"{name}@{production}" if production is not None else None
    bundle = registry.bundle(name, mv.version)
    onnx = onnx_record(bundle, mv.hashes)
    try:
        suite = field_suite(home, procedure)
    except NoFieldSuite as e:
        seal = C.make_seal(model=mv.ref, baseline=baseline_ref, field_suite=None,
                           checks=[C.no_field_suite_check(str(e))], onnx=onnx)
        return {**seal, "report_path": None}
    report = registry.report_path(name, mv.version, baseline_ref, suite.ref)
    for stored in registry.seals(name, mv.version):
        if (stored.get("baseline"), stored.get("field_suite")) == (baseline_ref, suite.ref):
            _approve(registry, name, mv.version, stored, fresh=False)
            return {**stored, "report_path": str(report) if report.is_file() else None}

    spec = gate_spec(registry.recipe(name, mv.version), mv.ref)
    labels = list(ProcedureCatalog(home).get(procedure).labels)
    cand = _run(bundle, suite, labels, exact=True, ref=mv.ref)
    base = None
    if production is not None:
        base = _run(registry.bundle(name, production), suite, labels, exact=False,
                    ref=baseline_ref)
    candidate_m = evaluate(cand["chain"], labels)
    encoder_m = evaluate(cand["encoder"], labels) if cand["has_temporal"] else None
    baseline_m = evaluate(base["chain"], labels) if base else None
    privacy = None
    if spec.privacy is not None:
        if spec.privacy.label not in labels:
            raise BadInput(f"{mv.ref}: the gate's privacy label {spec.privacy.label!r} is not a "
                           f"class of procedure {procedure!r} ({labels})")
        privacy = privacy_scores(cand["chain"], labels.index(spec.privacy.label),
                                 spec.privacy.margin_s, spec.privacy.tolerance_s)
    checks = C.gate_checks(spec, candidate_m, baseline=baseline_m, encoder=encoder_m,
                           against=f"production {baseline_ref}" if baseline_ref else "production",
                           onnx=onnx, privacy=privacy)
    seal = C.make_seal(model=mv.ref, baseline=baseline_ref, field_suite=suite.ref,
                       checks=checks, onnx=onnx)
    stored = registry.put_seal(name, mv.version, seal)
    fresh = stored == seal
    if fresh or not report.is_file():
        _write_report(report, stored, labels, candidate_m, baseline_m, encoder_m, suite, cand,
                      base)
        registry.attach(mv.run_id, report)
    _approve(registry, name, mv.version, stored, fresh=fresh)
    log.info("%s against %s on %s: %s", mv.ref, baseline_ref or "(no production)", suite.ref,
             stored["verdict"])
    return {**stored, "report_path": str(report)}


def gate_spec(recipe: dict | None, ref: str) -> GateSpec:
    """The gate block of a version's recipe (defaults when it has none); ConfigError if bad."""
    return parse_gate((recipe or {}).get("gate"), f"{ref}: the recipe's gate block is invalid")


def onnx_record(bundle: Path, hashes: dict[str, str]) -> dict | None:
    """The seal's ``onnx`` block: parity figures from the bundle's ``parity.json`` and
    ``sha256``, a digest of the chain's ONNX graphs (sha256 over the lines ``<path> <sha256>``
    of its ``.onnx`` files in path order; each file's own hash is in ``models show``).
    None without a parity record (the parity check then fails)."""
    path = Path(bundle) / "parity.json"
    if not path.is_file():
        return None
    parity = json.loads(path.read_text())
    lines = "".join(f"{p} {h}\n" for p, h in sorted(hashes.items()) if p.endswith(".onnx"))
    return {"sha256": hashlib.sha256(lines.encode()).hexdigest(),
            "max_abs_diff": parity.get("max_abs_diff"),
            "top1_agreement": parity.get("top1_agreement"), "passed": bool(parity.get("passed"))}


def _run(bundle: Path, suite: FieldSuite, labels: list[str], *, exact: bool, ref: str) -> dict:
    """The chain's and its encoder's per-frame predictions on every field video, as
    :class:`LabelledVideo` lists, class indices in the taxonomy's order."""
    from surgflow.inference import ChainRunner

    runner = ChainRunner.load(bundle)
    own = list(runner.spec.labels)
    if exact and own != labels:
        raise BadInput(f"{ref} predicts classes {own}, but procedure {runner.spec.procedure!r} "
                       f"has {labels}; a chain must predict its procedure's taxonomy in order")
    unknown = [lbl for lbl in own if lbl not in labels]
    if unknown:
        raise BadInput(f"{ref} predicts classes {unknown} that procedure "
                       f"{runner.spec.procedure!r} does not have ({labels})")
    to_taxonomy = np.array([labels.index(lbl) for lbl in own], dtype=np.int64)
    out: dict[str, Any] = {"chain": [], "encoder": [], "has_temporal": runner.temporal is not None}
    for v in suite.videos:
        a = runner.analyze(v.path)
        n = min(a.num_frames, len(v.truth))
        truth = np.full(max(a.num_frames, len(v.truth)), -1, dtype=np.int64)
        truth[:n] = v.truth[:n]
        for key, tl in (("chain", a.timeline), ("encoder", a.encoder_timeline)):
            pred = np.full(truth.shape, -1, dtype=np.int64)
            pred[:a.num_frames] = to_taxonomy[tl.labels]
            out[key].append(LabelledVideo(v.video_id, v.source, float(a.fps), truth, pred))
    return out


def _approve(registry: Any, name: str, version: int, seal: dict, *, fresh: bool) -> None:
    """Point ``approved`` at ``version`` after an approving seal (compare-and-set, retried
    once on a concurrent move). An old seal returned again moves it only forward."""
    if seal.get("verdict") != "approved":
        return
    reason = (f"sealed approved against {seal.get('baseline') or 'no production'} on field "
              f"suite {seal.get('field_suite')}")
    for _ in range(2):
        current = registry.pointers(name).get("approved")
        if current == version or (not fresh and current is not None and current > version):
            return
        try:
            registry.move(name, "approved", version, by=GATE_BY, expected=current,
                          reason=reason)
            return
        except ConflictError:
            continue


def report_of(registry: Any, name: str, version: int, seal: dict) -> Path | None:
    """The comparison report written beside ``seal`` of ``name@version``, if there is one."""
    if not seal.get("field_suite"):
        return None
    path = registry.report_path(name, version, seal.get("baseline"), seal["field_suite"])
    return path if path.is_file() else None


def _write_report(path: Path, seal: dict, labels: list[str], candidate: dict,
                  baseline: dict | None, encoder: dict | None, suite: FieldSuite, cand: dict,
                  base: dict | None) -> None:
    from surgflow.evaluation.report import write_report

    timelines = []
    for i, v in enumerate(cand["chain"]):
        timelines.append({
            "video_id": v.video_id, "source": v.source, "fps": v.fps, "truth": v.truth,
            "candidate": v.pred, "production": base["chain"][i].pred if base else None,
            "encoder": cand["encoder"][i].pred if encoder is not None else None,
        })
    write_report(path, seal=seal, labels=labels, candidate=candidate, baseline=baseline,
                 encoder=encoder, timelines=timelines)
