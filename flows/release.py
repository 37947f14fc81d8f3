"""The release flow: a finished training run → export → parity → register → gate → seal.

Thin over the library, one task per call, passing ids and paths: the ONNX chain bundle of the
run (exported, its parity on golden clips measured), the registered candidate
``<procedure>-phase@N``, the gate's seal on the pinned field suite and, last, for a version
promoted to production, its drift reference (the chain over its own training view, what the
drift watch compares the inference stream with; advisory, since the watch builds a missing
one on first use). The
seal's checks are published as a markdown artifact linking the comparison report. With
``promote`` an approved candidate becomes production. A parity failure is not an error here:
the version is registered unpromotable and the gate rejects it, so the summary still says
what happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from surgflow.config import get_settings
from surgflow.data.privacy import PRIVACY_MODEL


@task(name="export-chain")
def export_chain(run_id: str) -> str:
    """The run's ONNX chain bundle (stages exported, graph checked, parity measured)."""
    from surgflow.export import bundle_from_run
    from surgflow.training.runs import RunStore

    home = get_settings().home
    store = RunStore(home)
    run_dir = store.dir(run_id)
    # a stage the recipe took `from: production` comes from the bundle the run recorded
    reused = set((store.get(run_id).get("reuse") or {}).values())
    out = run_dir / "bundle"
    bundle_from_run(run_dir, out, home=home, reuse=Path(reused.pop()) if reused else None)
    return str(out)


@task(name="register-chain")
def register_chain(run_id: str, bundle_dir: str) -> dict[str, Any]:
    """Register the bundle as the next candidate version of ``<procedure>-phase``."""
    from surgflow.registry.release import register_run

    version = register_run(run_id, Path(bundle_dir), home=get_settings().home)
    return {"name": version.name, "version": version.version}


@task(name="summarise-drift-reference")
def summarise_drift_reference(name: str, version: int) -> dict[str, Any]:
    """The version's drift reference: its chain over its own training view, stored with it."""
    from surgflow.drift.reference import summarise_release

    reference = summarise_release(get_settings(), name, version)
    return {"model": reference.model, "videos": len(reference.videos)}


@task(name="gate-chain")
def gate_chain(name: str, version: int) -> dict[str, Any]:
    """Evaluate the candidate against production on the field suite and seal the verdict."""
    from surgflow.evaluation.gate import gate_version
    from surgflow.registry import ModelRegistry

    return gate_version(ModelRegistry(), name, version)


@task(name="publish-verdict")
def publish_verdict(name: str, version: int, seal: dict[str, Any]) -> None:
    rows = "\n".join(
        f"| {c['name']} | {_fmt(c.get('value'))} | {_fmt(c.get('baseline'))} | "
        f"{_fmt(c.get('threshold'))} | {'✅' if c['passed'] else '❌'} | {c['reason']} |"
        for c in seal.get("checks", []))
    report = seal.get("report_path")
    link = f"\n\nComparison report: [{report}](file://{report})" if report else ""
    create_markdown_artifact(
        markdown=(f"## {name}@{version}: **{seal['verdict']}**\n\nBaseline "
                  f"{seal.get('baseline') or '(none: first model)'} on field suite "
                  f"{seal.get('field_suite')}\n\n| check | value | baseline | threshold | passed "
                  f"| reason |\n|---|---|---|---|---|---|\n{rows}{link}"),
        key=f"verdict-{name}-{version}".lower(), description=f"gate verdict of {name}@{version}")


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


@task(name="promote-chain")
def promote_chain(name: str, version: int, reason: str) -> dict[str, Any]:
    from surgflow.registry import ModelRegistry

    return ModelRegistry().promote(name, version, to="production", reason=reason,
                                   by="surgflow-release")


@flow(name="surgflow-release", validate_parameters=True)
def release_flow(run_id: str, promote: bool = False) -> dict[str, Any]:
    """Export, register and gate run ``run_id``'s chain; promote it if approved and asked to."""
    log = get_run_logger()
    bundle = export_chain(run_id)
    registered = register_chain(run_id, bundle)
    name, version = registered["name"], registered["version"]
    seal = gate_chain(name, version)
    publish_verdict(name, version, seal)
    log.info("%s@%s: %s", name, version, seal["verdict"])
    promoted = None
    if promote and seal["verdict"] == "approved":
        promoted = promote_chain(name, version, f"approved by seal on {seal['field_suite']}")
    if promoted is not None and name != PRIVACY_MODEL:
        # the drift watch compares the stream with production's phase chain only; advisory:
        # the watch builds a missing reference on first use, so a failure here must not undo
        # a release that was sealed
        state = summarise_drift_reference(name, version, return_state=True)
        if state.is_failed():
            log.warning("%s@%s: no drift reference yet (the drift watch builds it when it "
                        "first needs it): %s", name, version, state.message)
    return {"model": f"{name}@{version}", "name": name, "version": version,
            "verdict": seal["verdict"], "seal": seal, "promoted": promoted}
