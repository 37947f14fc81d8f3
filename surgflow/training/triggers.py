"""When a recipe retrains by itself: data growth, new sources (SPEC §9) and drift.

A recipe's view has a *footprint*: the labelled frames it would train on and the sources
(hospitals) they come from. :func:`crossings` compares the footprint of a new dataset version
with the footprint the recipe last started a pipeline for, and names each trigger crossed:

- ``growth``: labelled frames reached ``growth_factor`` × the baseline's;
- ``new_source``: a source appears that the baseline never saw.

The baseline is the larger of what the recipe's last trained run saw and what it last fired for,
so each crossing starts exactly one pipeline: once fired, the same data (or a replay of its
event, or the pipeline's own later writes below the next threshold) crosses nothing.
:class:`TriggerLedger` records firings durably and claims a crossing under a lock, so two
evaluators of the same event fire once between them. :func:`evaluate_version` is the whole
decision for one recipe and one new dataset version. Cron schedules are Prefect's; who owns a
recipe's periodic run, and when that run is skipped, is :mod:`surgflow.registry.periodic`'s.

A recipe with ``triggers.drift`` also retrains when a source of its procedure drifts from what
the production version was trained on (the drift watch's reports): :func:`drift_excess` is the
rule (enough videos in the source's window and a feature's PSI above ``psi_above``), and
:meth:`TriggerLedger.claim_drift` fires once per crossing of it: a source that stays drifted
fires once; it fires again only after it came back under the rule and crossed again, or for
another production version (whose reference differs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from surgflow.storage import json_bytes, locked, read_json, write_atomic
from surgflow.training.recipe import DriftTriggerSpec, Recipe, TriggerSpec
from surgflow.training.runs import now_iso


@dataclass(frozen=True)
class Footprint:
    """What a recipe's view holds: labelled frames and the sources they come from."""

    labelled_frames: int
    sources: frozenset[str] = field(default_factory=frozenset)

    def as_json(self) -> dict[str, Any]:
        return {"labelled_frames": self.labelled_frames, "sources": sorted(self.sources)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Footprint:
        return cls(int(data["labelled_frames"]), frozenset(data.get("sources", ())))


def baseline(*seen: Footprint | None) -> Footprint | None:
    """The footprint new data is compared with: the most frames and every source seen."""
    known = [f for f in seen if f is not None]
    if not known:
        return None
    return Footprint(max(f.labelled_frames for f in known),
                     frozenset().union(*(f.sources for f in known)))


def crossings(spec: TriggerSpec, current: Footprint, last: Footprint | None) -> list[str]:
    """The data triggers ``current`` crosses against ``last`` (None: never trained)."""
    if current.labelled_frames <= 0:
        return []
    out = []
    if spec.growth_factor is not None and last is not None and last.labelled_frames > 0 \
            and current.labelled_frames >= spec.growth_factor * last.labelled_frames:
        out.append("growth")
    if spec.new_source and (last is None or current.sources - last.sources):
        out.append("new_source")
    return out


def describe(reasons: list[str], current: Footprint, last: Footprint | None,
             spec: TriggerSpec) -> str:
    """One line saying why a recipe retrains."""
    parts = []
    if "growth" in reasons and last is not None:
        parts.append(f"labelled frames {last.labelled_frames} → {current.labelled_frames} "
                     f"(≥ {spec.growth_factor:g}×)")
    if "new_source" in reasons:
        new = sorted(current.sources - (last.sources if last else frozenset()))
        parts.append(f"new source{'s' if len(new) > 1 else ''} {', '.join(new)}")
    return "; ".join(parts)


def recipe_footprint(recipe: Recipe, home: Path, sources: list[str] | None = None) -> Footprint:
    """The footprint of ``recipe``'s view (all splits) over ``sources`` (default: the recipe's
    own, latest versions)."""
    from surgflow.data.views import footprint
    from surgflow.training.data import pin_sources, view_spec

    pinned = pin_sources(sources or recipe.data.sources, home)
    frames, found = footprint(view_spec(recipe, pinned, None), home)
    return Footprint(frames, frozenset(found))


def trained_footprint(recipe: Recipe, home: Path) -> Footprint | None:
    """What the recipe's last successful run trained on (None: it never trained)."""
    from surgflow.training.runs import RunStore

    store = RunStore(home)
    done = [r for r in store.list()
            if r["recipe_name"] == recipe.name and r["status"] == "succeeded"]
    if not done:
        return None
    pinned = store.get(done[-1]["run_id"]).get("dataset_versions") or []
    return recipe_footprint(recipe, home, pinned) if pinned else None


def uses_dataset(recipe: Recipe, dataset: str) -> bool:
    """Whether ``recipe``'s view mixes (some version of) ``dataset``."""
    from surgflow.data.versions import parse_ref

    return any(parse_ref(s)[0] == dataset for s in recipe.data.sources)


def pinned_to(recipe: Recipe, dataset: str, version: int) -> list[str]:
    """``recipe``'s sources with ``dataset`` pinned to ``version``; the others as it names them."""
    from surgflow.data.versions import parse_ref

    return [f"{dataset}@{version}" if parse_ref(s)[0] == dataset else s
            for s in recipe.data.sources]


def evaluate_version(recipe: Recipe, home: Path, dataset: str,
                     version: int) -> dict[str, Any] | None:
    """The firing ``dataset@version`` claims for ``recipe`` (:meth:`TriggerLedger.claim`), or
    None: the recipe does not mix that dataset, or its view crosses no trigger."""
    if not uses_dataset(recipe, dataset):
        return None
    current = recipe_footprint(recipe, home, pinned_to(recipe, dataset, version))
    return TriggerLedger(home).claim(recipe, current, trained_footprint(recipe, home),
                                     cause=f"{dataset}@{version}")


class DriftState(Protocol):
    """What the drift rule reads of one source's report (a
    :class:`surgflow.drift.watch.DriftReport`)."""

    procedure: str
    source: str
    model: str  # NAME@VERSION of the production version the window was compared against
    videos: int  # videos in the source's window

    @property
    def psi(self) -> Mapping[str, float]: ...


def drift_excess(spec: DriftTriggerSpec, videos: int,
                 psi: Mapping[str, float]) -> tuple[str, float] | None:
    """(feature, PSI) of the most drifted feature if the source has drifted under ``spec``
    (at least ``min_videos`` videos, that feature's PSI above ``psi_above``); else None."""
    if videos < spec.min_videos or not psi:
        return None
    worst = max(sorted(psi), key=lambda name: psi[name])
    return (worst, psi[worst]) if psi[worst] > spec.psi_above else None


#: how the ``why`` of every drift firing starts (the retrain it starts is told apart by it)
DRIFT_WHY = "drift: "


def drift_caused(cause: str | None) -> bool:
    """Whether a pipeline started for ``cause`` (a firing's ``why``) was started by drift."""
    return bool(cause) and cause.startswith(DRIFT_WHY)


def drift_key(report: DriftState) -> str:
    """What one drift crossing is of: a source of a procedure against one production version."""
    return f"drift:{report.procedure}:{report.source}@{report.model}"


def evaluate_drift(recipe: Recipe, home: Path,
                   reports: Iterable[DriftState]) -> list[dict[str, Any]]:
    """The firings ``reports`` claim for ``recipe`` (:meth:`TriggerLedger.claim_drift`): none
    without a drift trigger; only the reports of its own procedure count."""
    if recipe.triggers.drift is None:
        return []
    ledger = TriggerLedger(home)
    return [f for r in reports if r.procedure == recipe.procedure
            and (f := ledger.claim_drift(recipe, r)) is not None]


class TriggerLedger:
    """Firings per recipe under ``SURGFLOW_HOME/triggers/<recipe>.json``."""

    def __init__(self, home: Path):
        self.root = Path(home) / "triggers"

    def _path(self, recipe: str) -> Path:
        return self.root / f"{recipe}.json"

    def _read(self, recipe: str) -> dict[str, Any]:
        data = read_json(self._path(recipe))
        return data if isinstance(data, dict) else {}

    def firings(self, recipe: str) -> list[dict[str, Any]]:
        return list(self._read(recipe).get("firings", []))

    def last_fired(self, recipe: str) -> Footprint | None:
        """The footprint of the last data-trigger firing (a drift firing records none)."""
        fired = [f for f in self.firings(recipe) if f.get("footprint") is not None]
        return Footprint.from_json(fired[-1]["footprint"]) if fired else None

    def drift_states(self, recipe: str) -> dict[str, dict[str, Any]]:
        """Per :func:`drift_key`: whether it is drifted now and how often it crossed."""
        return dict(self._read(recipe).get("drift", {}))

    def claim(self, recipe: Recipe, current: Footprint, trained: Footprint | None,
              *, cause: str) -> dict[str, Any] | None:
        """Record a firing if ``current`` crosses a trigger; None if it crosses nothing.

        ``trained`` is what the recipe's last trained run saw; ``cause`` names the event
        (e.g. ``cholecystectomy@4``). The check and the record happen under one lock.
        """
        with locked(self.root / f"{recipe.name}.lock"):
            fired = self.firings(recipe.name)
            if any(f["cause"] == cause for f in fired):
                return None  # the same event delivered again
            last = baseline(trained, self.last_fired(recipe.name))
            reasons = crossings(recipe.triggers, current, last)
            if not reasons:
                return None
            firing = {"recipe": recipe.name, "cause": cause, "reasons": reasons,
                      "why": describe(reasons, current, last, recipe.triggers),
                      "footprint": current.as_json(),
                      "baseline": last.as_json() if last else None, "at": now_iso()}
            self._write(recipe.name, firings=[*fired, firing])
            return firing

    def claim_drift(self, recipe: Recipe, report: DriftState) -> dict[str, Any] | None:
        """Record a firing if ``report``'s source has just crossed ``recipe``'s drift rule
        (:func:`drift_excess`): drifted now, not drifted at the last look. Coming back under
        the rule is recorded too (no firing), so that a later crossing fires again. None: no
        drift trigger, another procedure, or no crossing. Under the ledger's lock."""
        spec = recipe.triggers.drift
        if spec is None or report.procedure != recipe.procedure:
            return None
        key = drift_key(report)
        excess = drift_excess(spec, report.videos, report.psi)
        with locked(self.root / f"{recipe.name}.lock"):
            states = self.drift_states(recipe.name)
            state = states.get(key, {"drifted": False, "crossings": 0})
            if (excess is not None) == bool(state["drifted"]):
                return None  # still drifted (fired already), or still fine
            crossings = int(state["crossings"]) + (excess is not None)
            states[key] = {"drifted": excess is not None, "crossings": crossings,
                           "videos": report.videos, "at": now_iso()}
            if excess is None:
                self._write(recipe.name, drift=states)
                return None
            feature, value = excess
            firing = {"recipe": recipe.name, "cause": f"{key}#{crossings}",
                      "reasons": ["drift"],
                      "why": (f"{DRIFT_WHY}{report.source} {feature} PSI {value:.2f} > "
                              f"{spec.psi_above:.2f} over {report.videos} videos"),
                      "drift": {"procedure": report.procedure, "source": report.source,
                                "model": report.model, "videos": report.videos,
                                "feature": feature, "psi": round(value, 4),
                                "psi_above": spec.psi_above, "min_videos": spec.min_videos},
                      "at": now_iso()}
            self._write(recipe.name, firings=[*self.firings(recipe.name), firing], drift=states)
            return firing

    def _write(self, recipe: str, **parts: Any) -> None:
        """Replace ``parts`` (``firings``, ``drift``) of the recipe's ledger, keeping the rest."""
        write_atomic(self._path(recipe), json_bytes(self._read(recipe) | parts))

    def all(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.glob("*.json")):
            out += json.loads(p.read_text()).get("firings", [])
        return sorted(out, key=lambda f: f["at"])
