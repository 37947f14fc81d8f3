"""The drift watch: each source's latest videos, as production sees them, against its reference.

One pass (:func:`watch`) reads the ``inference`` topic from the beginning and observes every
event of a procedure's production version: its video's features
(:func:`~surgflow.drift.features.video_features`) are persisted, once per (video, model
version), under ``SURGFLOW_HOME/drift/observations/<name>/<version>/<video_id>.json``, so a
replay or a later pass adds nothing and counts stay stable. Then, per (procedure, source), the
window of its latest ``window`` observed videos (by ``produced_at``) is compared with the
production version's reference (:func:`~surgflow.drift.reference.summarise_release`, made on
first use; the source's own part of it when the version was trained on the source) into a
:class:`DriftReport`: per-feature PSI (and the KS or chi-square p where it means something) and
whether the source has drifted
(:func:`surgflow.training.triggers.drift_excess`, the one rule, under the given thresholds).

Skipped: events of the privacy detector (not a phase model), events of any model but the
procedure's production version, events that fail the wire schema (the feedback flow
dead-letters them), and events whose video is not registered yet (observed on a later pass).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from surgflow.config import Settings
from surgflow.data.privacy import PRIVACY, PRIVACY_MODEL
from surgflow.data.registry import VideoRecord, VideoRegistry
from surgflow.drift.features import BrightnessCache, video_features
from surgflow.drift.stats import Distribution, FeatureDrift, Summary
from surgflow.errors import BadInput, SurgflowError
from surgflow.feedback.schemas import InferenceEvent, WireError, decode
from surgflow.registry.model import iso, model_name
from surgflow.storage import json_bytes, read_json, write_exclusive
from surgflow.training.recipe import DriftTriggerSpec
from surgflow.training.triggers import drift_excess

log = logging.getLogger(__name__)

WINDOW = 50


@dataclass(frozen=True)
class Observation:
    """One video as ``model`` (``NAME@VERSION``) analysed it, with its features."""

    video_id: str
    procedure: str
    source: str
    model: str
    event_id: str
    produced_at: datetime
    features: dict[str, Distribution]

    def as_json(self) -> dict[str, Any]:
        return {"video_id": self.video_id, "procedure": self.procedure, "source": self.source,
                "model": self.model, "event_id": self.event_id,
                "produced_at": iso(self.produced_at),
                "features": {k: d.as_json() for k, d in self.features.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Observation:
        return cls(str(data["video_id"]), str(data["procedure"]), str(data["source"]),
                   str(data["model"]), str(data["event_id"]),
                   datetime.fromisoformat(str(data["produced_at"]).replace("Z", "+00:00")),
                   {k: Distribution.from_json(d) for k, d in data["features"].items()})


def observe(event: InferenceEvent, record: VideoRecord, lumas: list[float]) -> Observation:
    """The observation of ``event``'s analysis of the video ``record``."""
    segments = [s.model_dump() for s in event.segments]
    return Observation(event.video_id, event.procedure, record.source,
                       f"{event.model.name}@{event.model.version}", event.event_id,
                       event.produced_at, video_features(segments, record, lumas))


class ObservationStore:
    """Observations per model version, under ``SURGFLOW_HOME/drift/observations/``; the first
    one of a (video, version) is kept."""

    def __init__(self, home: Path):
        self.root = Path(home) / "drift" / "observations"

    def _path(self, name: str, version: int, video_id: str) -> Path:
        return self.root / name / str(int(version)) / f"{video_id}.json"

    def has(self, name: str, version: int, video_id: str) -> bool:
        return self._path(name, version, video_id).is_file()

    def put(self, obs: Observation) -> bool:
        """Store ``obs``; False if its (video, version) was observed already."""
        name, _, version = obs.model.rpartition("@")
        return write_exclusive(self._path(name, int(version), obs.video_id),
                               json_bytes(obs.as_json()))

    def of_version(self, name: str, version: int) -> list[Observation]:
        folder = self.root / name / str(int(version))
        if not folder.is_dir():
            return []
        return [Observation.from_json(d) for p in sorted(folder.glob("*.json"))
                if isinstance(d := read_json(p), dict)]


def latest(observations: Iterable[Observation], size: int) -> list[Observation]:
    """The ``size`` latest observations by ``produced_at`` (a tie: by video id)."""
    ordered = sorted(observations, key=lambda o: (o.produced_at, o.video_id))
    return ordered[-size:] if size > 0 else []


@dataclass(frozen=True)
class DriftReport:
    """A source's window against its production version's reference."""

    procedure: str
    source: str
    model: str
    videos: int
    reference_videos: int
    features: dict[str, FeatureDrift]
    psi_above: float
    min_videos: int
    #: the source whose part of the training view it is compared with (None: the whole view,
    #: a source the version was never trained on)
    reference_source: str | None = None

    @property
    def psi(self) -> dict[str, float]:
        return {name: f.psi for name, f in self.features.items()}

    @property
    def excess(self) -> tuple[str, float] | None:
        """(feature, PSI) over the threshold, if the source has drifted."""
        return drift_excess(DriftTriggerSpec(psi_above=self.psi_above,
                                             min_videos=self.min_videos),
                            self.videos, self.psi)

    @property
    def drifted(self) -> bool:
        return self.excess is not None

    def as_json(self) -> dict[str, Any]:
        worst = max(sorted(self.psi), key=lambda n: self.psi[n]) if self.psi else None
        return {"procedure": self.procedure, "source": self.source, "model": self.model,
                "videos": self.videos, "reference_videos": self.reference_videos,
                "reference_source": self.reference_source,
                "features": {n: f.as_json() for n, f in self.features.items()},
                "max_psi": {"feature": worst,
                            "psi": round(self.psi[worst], 4) if worst else None},
                "drifted": self.drifted, "psi_above": self.psi_above,
                "min_videos": self.min_videos}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriftReport:
        return cls(str(data["procedure"]), str(data["source"]), str(data["model"]),
                   int(data["videos"]), int(data["reference_videos"]),
                   {n: FeatureDrift.from_json(f) for n, f in data["features"].items()},
                   float(data["psi_above"]), int(data["min_videos"]),
                   data.get("reference_source"))


def compare_window(reference: Summary, reference_videos: int, window: list[Observation],
                   thresholds: DriftTriggerSpec, *, procedure: str, source: str,
                   model: str, reference_source: str | None = None) -> DriftReport:
    """The report of one source's ``window`` against ``reference`` (pure)."""
    observed = Summary.of(o.features for o in window)
    return DriftReport(procedure, source, model, len(window), reference_videos,
                       observed.compare(reference), thresholds.psi_above,
                       thresholds.min_videos, reference_source)


@dataclass
class WatchResult:
    """What one pass read, observed and found."""

    reports: list[DriftReport] = field(default_factory=list)
    read: int = 0
    observed: int = 0
    already: int = 0
    skipped: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"reports": [r.as_json() for r in self.reports], "read": self.read,
                "observed": self.observed, "already_observed": self.already,
                "skipped": dict(sorted(self.skipped.items())), "problems": list(self.problems)}


def check_procedure(settings: Settings, procedure: str) -> str:
    """``procedure`` if it is one whose phase model is watched; UnknownName or BadInput."""
    from surgflow.data.taxonomy import ProcedureCatalog

    if procedure == PRIVACY:
        raise BadInput(f"{PRIVACY!r} is the out-of-body detector's track, not a phase model; "
                       "the drift watch watches phase models")
    ProcedureCatalog(settings.home).get(procedure)
    return procedure


def watched_procedures(settings: Settings) -> list[str]:
    """Every procedure whose phase model is watched (all but the privacy track)."""
    from surgflow.data.taxonomy import ProcedureCatalog

    return sorted(p.name for p in ProcedureCatalog(settings.home).list() if p.name != PRIVACY)


def read_events(settings: Settings) -> tuple[list[InferenceEvent], int]:
    """Every inference event on the topic, oldest first per partition, and how many records
    failed the wire schema."""
    from surgflow.feedback.broker import bootstrap
    from surgflow.feedback.dlq import read_records

    events, bad = [], 0
    for r in read_records(bootstrap(settings), settings.topic("inference")):
        try:
            events.append(decode("inference", r.value))
        except WireError:
            bad += 1
    return events, bad


def watch(settings: Settings, procedure: str | None = None, *, window: int = WINDOW,
          thresholds: DriftTriggerSpec | None = None, registry: Any = None,
          events: list[InferenceEvent] | None = None) -> WatchResult:
    """One pass: observe the new inference events of every procedure's production version
    (``procedure``: of that one only) and report each source's window against the version's
    reference, judged by ``thresholds`` (default: the drift trigger's defaults). ``events``
    skips reading the topic."""
    if window < 1:
        raise BadInput(f"drift window {window}: expected at least 1 video")
    if procedure is not None:
        check_procedure(settings, procedure)
    if registry is None:
        from surgflow.registry import ModelRegistry

        registry = ModelRegistry(settings)
    thresholds = thresholds or DriftTriggerSpec()
    result = WatchResult()
    if events is None:
        events, bad = read_events(settings)
        result.skipped["invalid"] += bad
    result.read = len(events)
    store = ObservationStore(settings.home)
    videos = VideoRegistry(settings.home, settings.resolved_video_roots())
    cache = BrightnessCache(settings.home)
    production: dict[str, int | None] = {}
    for event in events:
        why = _skip(event, procedure, production, registry)
        if why is not None:
            result.skipped[why] += 1
            continue
        if store.has(event.model.name, event.model.version, event.video_id):
            result.already += 1
            continue
        record = videos.find(event.video_id)
        if record is None:
            result.skipped["unregistered"] += 1
            continue
        if record.procedure != event.procedure:
            result.skipped["other_procedure"] += 1
            continue
        try:
            lumas = cache.get(record.sha256, record.path, record.num_frames)
        except SurgflowError as e:
            result.problems.append(f"video {record.video_id!r}: {e}")
            continue
        if store.put(observe(event, record, lumas)):
            result.observed += 1
        else:
            result.already += 1
    for proc in [procedure] if procedure is not None else watched_procedures(settings):
        result.reports += _reports(settings, proc, _production(proc, production, registry),
                                   store, registry, window, thresholds, result.problems)
    for p in result.problems:
        log.warning("drift watch: %s", p)
    return result


def _production(procedure: str, cache: dict[str, int | None], registry: Any) -> int | None:
    if procedure not in cache:
        try:
            cache[procedure] = registry.production(model_name(procedure))
        except BadInput:  # a procedure no model could be named after
            cache[procedure] = None
    return cache[procedure]


def _skip(event: InferenceEvent, procedure: str | None, production: dict[str, int | None],
          registry: Any) -> str | None:
    """Why ``event`` is not observed (None: it is)."""
    if event.procedure == PRIVACY or event.model.name == PRIVACY_MODEL:
        return "privacy"
    if procedure is not None and event.procedure != procedure:
        return "other_procedure"
    if event.model.name != model_name(event.procedure):
        return "other_model"
    version = _production(event.procedure, production, registry)
    if version is None:
        return "no_production"
    return None if event.model.version == version else "not_production"


def _reports(settings: Settings, procedure: str, version: int | None, store: ObservationStore,
             registry: Any, window: int, thresholds: DriftTriggerSpec,
             problems: list[str]) -> list[DriftReport]:
    if version is None:
        return []
    name = model_name(procedure)
    by_source: dict[str, list[Observation]] = defaultdict(list)
    for obs in store.of_version(name, version):
        by_source[obs.source].append(obs)
    if not by_source:
        return []
    from surgflow.drift.reference import summarise_release

    try:
        reference = summarise_release(settings, name, version, registry=registry)
    except SurgflowError as e:
        problems.append(f"{name}@{version}: no drift reference: {e}")
        return []
    reports = []
    for source, obs in sorted(by_source.items()):
        summary, videos, own = reference.of_source(source)
        reports.append(compare_window(summary, videos, latest(obs, window), thresholds,
                                      procedure=procedure, source=source,
                                      model=reference.model, reference_source=own))
    return reports
