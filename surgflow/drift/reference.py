"""A released version's drift reference: its own training view, as the model itself sees it.

What a source's videos are compared with is what the production version saw when it was
trained, through its own eyes: the version's chain (ONNX, :class:`~surgflow.inference.ChainRunner`)
over the videos of its training view (the recipe's ``data`` over the dataset versions it
pinned, train and val splits), summarised into the same per-video features the watch takes of
inference events (:mod:`surgflow.drift.features`), aggregated. At most ``max_videos`` videos
are analysed, picked by a stable hash of their ids, so the same version always gets the same
reference. It is kept whole and per source: a source the version was trained on is compared with
its own part of the view (hospital A's cameras against hospital A's training videos, not
against a mix in which another hospital's frame rate counts as a shift), a source it never saw
with the whole view (:meth:`Reference.of_source`).

The reference is immutable, like the version: a JSON file beside the version's seals
(:meth:`~surgflow.registry.ModelRegistry.drift_reference_path`), written once without overwrite
and attached to the version's MLflow run under ``drift/``. :func:`summarise_release` returns
the stored one if there is one.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from surgflow.config import Settings
from surgflow.data.views import ViewSpec, ViewVideo, resolve_view
from surgflow.drift.features import BrightnessCache, video_features
from surgflow.drift.stats import FEATURES, Summary
from surgflow.errors import BadInput
from surgflow.registry.model import now_iso
from surgflow.storage import json_bytes, read_json, write_exclusive

log = logging.getLogger(__name__)

MAX_VIDEOS = 20
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Reference:
    """``model`` (``NAME@VERSION``)'s features over ``videos`` of its training view."""

    model: str
    dataset_versions: list[str]
    videos: list[str]
    summary: Summary
    created_at: str
    #: per source of the view: its videos' summary and how many they are
    by_source: dict[str, tuple[Summary, int]] = field(default_factory=dict)

    def of_source(self, source: str) -> tuple[Summary, int, str | None]:
        """What ``source`` is compared with: its own part of the training view (summary,
        videos, ``source``) if the version was trained on it, else the whole view (…, None)."""
        if source in self.by_source:
            summary, videos = self.by_source[source]
            return summary, videos, source
        return self.summary, len(self.videos), None

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "dataset_versions": list(self.dataset_versions),
                "videos": list(self.videos), "created_at": self.created_at,
                "bins": {f.name: f.bins() for f in FEATURES.values() if f.kind == "continuous"},
                "features": self.summary.as_json(),
                "by_source": {s: {"videos": n, "features": summary.as_json()}
                              for s, (summary, n) in sorted(self.by_source.items())}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reference:
        """The stored reference; a continuous feature stored on other bins than the feature's
        bins now is left out (not compared) rather than compared bin label by bin label."""
        stale = {name for name, bins in data.get("bins", {}).items()
                 if name in FEATURES and FEATURES[name].bins() != bins}

        def summary(features: Mapping[str, Any]) -> Summary:
            return Summary.from_json({k: v for k, v in features.items() if k not in stale})

        return cls(str(data["model"]), list(data["dataset_versions"]), list(data["videos"]),
                   summary(data["features"]), str(data["created_at"]),
                   {s: (summary(d["features"]), int(d["videos"]))
                    for s, d in data.get("by_source", {}).items()})


def training_videos(view: ViewSpec, sources: list[str], settings: Settings,
                    max_videos: int = MAX_VIDEOS) -> list[ViewVideo]:
    """At most ``max_videos`` videos of ``view`` over ``sources`` (train and val splits),
    picked by a stable hash of their ids."""
    found: dict[str, ViewVideo] = {}
    for split in SPLITS:
        spec = view.model_copy(update={"sources": sources, "split": split, "balance": "none",
                                       "balance_params": {}})
        for v in resolve_view(spec, settings.home).videos:
            found.setdefault(v.video_id, v)
    ranked = sorted(found.values(),
                    key=lambda v: hashlib.sha256(v.video_id.encode()).hexdigest())
    return sorted(ranked[:max_videos], key=lambda v: v.video_id)


def summarise(runner: Any, videos: list[ViewVideo], settings: Settings
              ) -> tuple[Summary, dict[str, tuple[Summary, int]]]:
    """The features of ``videos`` as ``runner``'s chain analyses them: of all, and per source
    (with its number of videos)."""
    cache = BrightnessCache(settings.home)
    labels = list(runner.spec.labels)
    rows: dict[str, list] = defaultdict(list)
    for v in videos:
        analysis = runner.analyze(v.path, info=v.record)
        segments = analysis.timeline.segments(labels)
        rows[v.source].append(
            video_features(segments, v, cache.get(v.sha256, v.path, v.num_frames)))
    return (Summary.of(r for source_rows in rows.values() for r in source_rows),
            {s: (Summary.of(r), len(r)) for s, r in sorted(rows.items())})


def summarise_release(settings: Settings, name: str, version: int, *,
                      max_videos: int = MAX_VIDEOS, registry: Any = None) -> Reference:
    """The drift reference of ``name@version``: the stored one, or made, stored and attached
    to the version's MLflow run now. BadInput if its training view holds no video."""
    if registry is None:
        from surgflow.registry import ModelRegistry

        registry = ModelRegistry(settings)
    path = registry.drift_reference_path(name, version)
    stored = read_json(path)
    if isinstance(stored, dict):
        return Reference.from_json(stored)
    mv = registry.get(name, version)
    recipe = registry.recipe(name, mv.version)
    if "data" not in recipe:
        raise BadInput(f"{mv.ref}: its recorded recipe has no data section; no training view "
                       "to summarise")
    view = ViewSpec.model_validate(recipe["data"])
    sources = list(mv.dataset_versions) or list(view.sources)
    videos = training_videos(view, sources, settings, max_videos)
    if not videos:
        raise BadInput(f"{mv.ref}: its training view over {', '.join(sources)} holds no video "
                       "to summarise")
    from surgflow.inference import ChainRunner

    runner = ChainRunner.load(registry.bundle(name, mv.version))
    whole, by_source = summarise(runner, videos, settings)
    reference = Reference(mv.ref, sources, [v.video_id for v in videos], whole, now_iso(),
                          by_source)
    if write_exclusive(path, json_bytes(reference.as_json())):
        log.info("%s: drift reference over %d videos of %s", mv.ref, len(videos),
                 ", ".join(sources))
        registry.attach(mv.run_id, path, folder="drift")
    return Reference.from_json(read_json(path))
