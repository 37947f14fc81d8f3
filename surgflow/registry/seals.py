"""Seals: the gate's immutable verdicts, one file per (version, baseline, field suite).

A seal (SPEC §7) is written once with :func:`surgflow.storage.write_exclusive` under
``SURGFLOW_HOME/registry/<name>/seals/<version>/<key>.json``; the key is a digest of its
baseline and field suite, so the same inputs always name the same file and a second writer
gets the stored seal back unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from surgflow.errors import BadInput
from surgflow.storage import json_bytes, read_json, write_exclusive

VERDICTS = ("approved", "rejected")


def key(baseline: str | None, field_suite: str) -> str:
    return hashlib.sha256(json.dumps([baseline, field_suite]).encode()).hexdigest()[:20]


def validate(seal: dict, ref: str) -> dict:
    """``seal`` checked against SPEC §7 for the version ``ref`` (``NAME@VERSION``)."""
    if not isinstance(seal, dict):
        raise BadInput(f"seal for {ref}: expected a JSON object, got {type(seal).__name__}")
    missing = [k for k in ("model", "verdict", "baseline", "field_suite", "sealed_at", "checks")
               if k not in seal]
    if missing:
        raise BadInput(f"seal for {ref}: missing {', '.join(missing)}")
    if seal["model"] != ref:
        raise BadInput(f"seal for {ref}: its model is {seal['model']!r}")
    if seal["verdict"] not in VERDICTS:
        raise BadInput(f"seal for {ref}: verdict {seal['verdict']!r}, expected one of "
                       f"{', '.join(VERDICTS)}")
    if not isinstance(seal["field_suite"], str) or not seal["field_suite"]:
        raise BadInput(f"seal for {ref}: field_suite {seal['field_suite']!r}, expected "
                       "DATASET@VERSION")
    if seal["baseline"] is not None and not isinstance(seal["baseline"], str):
        raise BadInput(f"seal for {ref}: baseline {seal['baseline']!r}, expected NAME@VERSION "
                       "or null")
    checks = seal["checks"]
    if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
        raise BadInput(f"seal for {ref}: checks must be a list of objects")
    failed = failing(seal)
    if seal["verdict"] == "approved" and failed:
        raise BadInput(f"seal for {ref}: verdict approved but checks failed: "
                       f"{', '.join(c.get('name', '?') for c in failed)}")
    return seal


def failing(seal: dict) -> list[dict]:
    """The checks of ``seal`` that did not pass (an ONNX record that failed counts)."""
    out = [c for c in seal.get("checks", []) if not c.get("passed")]
    onnx = seal.get("onnx")
    listed = any(c.get("name") == "onnx.parity" for c in out)
    if isinstance(onnx, dict) and onnx.get("passed") is False and not listed:
        out.append({"name": "onnx.parity", "passed": False,
                    "reason": f"ONNX parity failed (max |Δ| {onnx.get('max_abs_diff')})"})
    return out


def blocker(seals: list[dict], baseline: str | None) -> str | None:
    """Why these seals of a version (oldest first) do not approve promoting it over the
    production ``baseline`` (``NAME@VERSION``, or None with no production); None: they do."""
    if not seals:
        return "no seal"
    current = [s for s in seals if s.get("baseline") == baseline]
    if not current:
        against = ", ".join(sorted({str(s.get("baseline")) for s in seals}))
        return (f"no seal against the current production {baseline or '(none)'} "
                f"(sealed against {against})")
    seal = current[-1]
    if seal.get("verdict") != "approved":
        return f"its seal is {seal.get('verdict')}: {describe_failures(seal)}"
    return None


def describe_failures(seal: dict) -> str:
    parts = [f"{c.get('name', '?')} ({c.get('reason') or 'failed'})" for c in failing(seal)]
    return "; ".join(parts) or "verdict rejected"


class SealStore:
    """The seals of one registered model."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def put(self, version: int, seal: dict) -> dict:
        """Store ``seal`` unless one with its key exists; return the stored seal."""
        path = self.root / str(version) / f"{key(seal['baseline'], seal['field_suite'])}.json"
        if not write_exclusive(path, json_bytes(seal)):
            stored = read_json(path)
            if stored is None:
                raise BadInput(f"{path}: stored seal is not valid JSON")
            return stored
        return seal

    def get(self, version: int, baseline: str | None, field_suite: str) -> dict | None:
        return read_json(self.root / str(version) / f"{key(baseline, field_suite)}.json")

    def all(self, version: int) -> list[dict]:
        """Every seal of ``version``, oldest first (by ``sealed_at``, then when stored)."""
        d = self.root / str(version)
        found = []
        for p in d.glob("*.json"):
            seal = read_json(p)
            if seal is not None:
                # sealed_at may tie (second resolution); the file's age orders those
                found.append(((str(seal.get("sealed_at", "")), p.stat().st_mtime_ns), seal))
        return [seal for _, seal in sorted(found, key=lambda t: t[0])]

    def report_path(self, version: int, baseline: str | None, field_suite: str) -> Path:
        """Where the gate's comparison report for these inputs lives, beside their seal."""
        return self.root / str(version) / f"report-{key(baseline, field_suite)}.html"

    def latest(self, version: int) -> dict | None:
        seals = self.all(version)
        return seals[-1] if seals else None
