"""Immutable dataset versions (SPEC §4, §5): commit, publish, rebase, read, gc.

Layout under ``SURGFLOW_HOME/datasets/<dataset>/``::

    versions/000001.json   one manifest per version, created with os.link (never replaced)
    data/<sha256>.parquet  content-addressed data files (see surgflow.data.datafiles)
    cache/                 segments derived from runs written before runs stored them

Publishing version N+1 writes the data files first, then links the manifest under its final
name. ``os.link`` fails if the name exists, so of two writers racing for N+1 exactly one wins;
the loser re-reads the new latest version, re-applies only what that version lacks, and tries
N+2. A crash before the link leaves orphaned data files (removed by :meth:`DatasetStore.gc`)
and the old version; a crash after it leaves the complete new version.

A child version lists its parent's data files plus one new run holding only the videos it
changed (their snapshots, resolved intervals and coalesced segments), so a small commit costs
O(change) and nothing is rebuilt after it: readers query the runs' files in place (see
:func:`surgflow.data.segments.relation`). Runs are merged like a binary counter (two runs of
similar size become one), which keeps the number of files logarithmic in the commits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from surgflow.data import datafiles as df
from surgflow.data.changes import apply_events
from surgflow.data.datafiles import DataFile, DatasetVideo
from surgflow.data.labels import Interval, LabelEvent, Segment, check_event
from surgflow.data.manifest import Manifest, Stats, video_hash
from surgflow.data.registry import VideoRecord
from surgflow.data.segments import (
    ORDER,
    Relation,
    derived_path,
    merge_runs,
    read_latest,
    relation,
    run_sql,
)
from surgflow.data.splits import split_of
from surgflow.data.taxonomy import NAME_PATTERN, ProcedureCatalog, dataset_takes
from surgflow.errors import BadInput, ConflictError, NotFound
from surgflow.storage import json_bytes, write_exclusive

log = logging.getLogger(__name__)
_MANIFEST = re.compile(r"^(\d{6,})\.json$")
_DATASET = re.compile(f"^{NAME_PATTERN}$")
DEFAULT_GC_GRACE_S = 900.0


@dataclass(frozen=True)
class CommitResult:
    """What a commit did. ``version`` is None when there was nothing new to publish.

    ``retries`` races were lost to other writers; after each, the version was ``carried``
    onto the winner's or ``rebuilt`` on it. Seconds: ``build_s`` building the first attempt
    (parent reads, resolving events, data files), ``race_s`` carrying or rebuilding after lost
    races, ``publish_s`` creating manifests (a lost try included)."""

    dataset: str
    version: int | None
    parent: int | None
    applied: int
    duplicates: int
    videos_added: int
    retries: int
    fingerprint: str | None
    carried: int = 0
    rebuilt: int = 0
    build_s: float = 0.0
    race_s: float = 0.0
    publish_s: float = 0.0


@dataclass(frozen=True)
class _Built:
    """A version built on ``base`` but not yet published, and what building it read of the
    base (a lost race carries it onto a newer parent without reading the base again)."""

    manifest: Manifest
    applied: int
    added: int
    base: Manifest | None
    done: frozenset[str]  # the commit's event ids the base had applied
    known: dict[str, DatasetVideo]  # the base's snapshots of the commit's videos
    wanted: list[str]  # the commit's videos
    base_rows: pa.Table  # the base's intervals of those of them it held


@dataclass(frozen=True)
class DatasetState:
    """A version's full content: videos, resolved intervals (with keys), events, offsets."""

    dataset: str
    version: int
    videos: dict[str, DatasetVideo]
    intervals: dict[str, list[Interval]]
    event_ids: frozenset[str]
    offsets: dict[str, int]


_REF = re.compile(f"^(?P<dataset>{NAME_PATTERN})(?:@(?P<version>[1-9][0-9]*))?$")


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"dataset"`` or ``"dataset@version"`` -> (dataset, version or None); BadInput if bad.

    The one grammar of dataset references, for commands and recipes alike."""
    m = _REF.match(ref) if isinstance(ref, str) else None
    if not m:
        raise BadInput(f"expected DATASET or DATASET@VERSION (a dataset name of lowercase "
                       f"letters, digits, '-' or '_'; a version 1, 2, ...), got {ref!r}")
    return m["dataset"], int(m["version"]) if m["version"] else None


class DatasetStore:
    """Versioned datasets under ``home/datasets``."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.root = self.home / "datasets"

    # ---- reading -------------------------------------------------------------------------

    def dataset_dir(self, dataset: str) -> Path:
        if not isinstance(dataset, str) or not _DATASET.match(dataset):
            raise BadInput(f"dataset name {dataset!r} must be 1-64 lowercase letters, digits, "
                           "'-' or '_'")
        return self.root / dataset

    def datasets(self) -> list[str]:
        """Names of the datasets that have at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir()
                      if _DATASET.match(d.name) and self.latest_version(d.name) is not None)

    def _version_numbers(self, dataset: str) -> list[int]:
        vdir = self.dataset_dir(dataset) / "versions"
        if not vdir.is_dir():
            return []
        return sorted(int(m.group(1)) for n in os.listdir(vdir) if (m := _MANIFEST.match(n)))

    def latest_version(self, dataset: str) -> int | None:
        """The newest version number of ``dataset``, or None if it has none."""
        numbers = self._version_numbers(dataset)
        return numbers[-1] if numbers else None

    def _manifest_path(self, dataset: str, version: int) -> Path:
        return self.dataset_dir(dataset) / "versions" / f"{version:06d}.json"

    def manifest(self, dataset: str, version: int | None = None) -> Manifest:
        """The manifest of ``dataset@version`` (latest if None); NotFound if there is none."""
        if version is None:
            version = self.latest_version(dataset)
            if version is None:
                raise NotFound(f"dataset {dataset!r} has no version yet"
                               + _known(self.datasets()))
        path = self._manifest_path(dataset, version)
        if not path.is_file():
            latest = self.latest_version(dataset)
            if latest is None:
                raise NotFound(f"dataset {dataset!r} has no version yet" + _known(self.datasets()))
            raise NotFound(f"dataset {dataset!r} has no version {version}; "
                           f"versions are 1..{latest}")
        return Manifest.model_validate_json(path.read_bytes())

    def latest_version_before(self, dataset: str, at: datetime) -> int | None:
        """The newest version of ``dataset`` created no later than ``at`` (None: none was)."""
        for n in reversed(self._version_numbers(dataset)):
            if self.manifest(dataset, n).created_at <= at:
                return n
        return None

    def versions(self, dataset: str) -> list[Manifest]:
        """Every version of ``dataset``, oldest first; NotFound if it has none."""
        numbers = self._version_numbers(dataset)
        if not numbers:
            raise NotFound(f"dataset {dataset!r} has no version yet" + _known(self.datasets()))
        return [self.manifest(dataset, n) for n in numbers]

    def state(self, dataset: str, version: int | None = None) -> DatasetState:
        """The full content of a version (O(dataset); for loaders, diffs and tests)."""
        m = self.manifest(dataset, version)
        d = self.dataset_dir(dataset)
        videos = df.table_videos(read_latest(d, m, "videos"))
        intervals = df.table_intervals(read_latest(d, m, "intervals"))
        events: set[str] = set()
        for run in m.runs():
            if "events" in run:
                events.update(df.read_data_file(d, run["events"]).column("event_id").to_pylist())
        return DatasetState(dataset, m.version, videos, intervals, frozenset(events),
                            dict(m.offsets))

    def videos_table(self, dataset: str, version: int | None = None) -> pa.Table:
        """The version's videos (registry snapshot, ``split``, ``content_hash``) as Arrow."""
        m = self.manifest(dataset, version)
        return read_latest(self.dataset_dir(dataset), m, "videos")

    def relation(self, dataset: str, version: int | None = None,
                 kind: str = "segments") -> Relation:
        """The version's ``segments`` (SPEC §6) or ``videos`` rows as SQL over its files."""
        return relation(self.dataset_dir(dataset), self.manifest(dataset, version), kind)

    def segments_table(self, dataset: str, version: int | None = None) -> pa.Table:
        """Coalesced resolved intervals: dataset, version, video_id, start_frame, end_frame,
        label, provenance, confidence (null for human labels), by video and start frame."""
        return run_sql(self.relation(dataset, version), ORDER["segments"])

    def find_videos(self, dataset: str, video_ids: list[str],
                    version: int | None = None) -> dict[str, DatasetVideo]:
        """The version's snapshots of those of ``video_ids`` it holds, reading only what they
        need (absent ids are simply missing from the result)."""
        return self._videos(dataset, self.manifest(dataset, version), list(video_ids))

    def find_intervals(self, dataset: str, video_ids: list[str],
                       version: int | None = None) -> dict[str, list[Interval]]:
        """The version's resolved intervals of those of ``video_ids`` it holds, reading only
        what they need (absent ids are simply missing from the result)."""
        return self._intervals(dataset, self.manifest(dataset, version), list(video_ids))

    def _intervals(self, dataset: str, m: Manifest | None,
                   video_ids: list[str]) -> dict[str, list[Interval]]:
        return df.table_intervals(self._interval_rows(dataset, m, video_ids))

    def _interval_rows(self, dataset: str, m: Manifest | None, video_ids: list[str]) -> pa.Table:
        if m is None or not video_ids:
            return df.empty(df.INTERVALS_SCHEMA)
        return read_latest(self.dataset_dir(dataset), m, "intervals", video_ids)

    def _videos(self, dataset: str, m: Manifest | None,
                video_ids: list[str]) -> dict[str, DatasetVideo]:
        if m is None or not video_ids:
            return {}
        return df.table_videos(read_latest(self.dataset_dir(dataset), m, "videos", video_ids))

    def _applied(self, dataset: str, m: Manifest | None, event_ids: list[str]) -> set[str]:
        if m is None or not event_ids:
            return set()
        d, found = self.dataset_dir(dataset), set()
        for run in m.runs():
            if "events" in run:
                t = df.read_data_file(d, run["events"], "event_id", event_ids)
                found.update(t.column("event_id").to_pylist())
        return found

    # ---- writing -------------------------------------------------------------------------

    def commit(
        self,
        dataset: str,
        *,
        videos: list[VideoRecord],
        events: list[LabelEvent],
        offsets: dict[str, int],
        parked_events: int = 0,
        max_retries: int = 20,
        checked: bool = False,
    ) -> CommitResult:
        """Publish version N+1 = latest version + ``videos`` + the ``events`` it lacks.

        ``dataset`` is a procedure's name (UnknownName otherwise) and every video must be of
        that procedure. Events whose ``event_id`` the latest version (or an ancestor) already
        applied count as duplicates. Every event must name a video of the dataset or of
        ``videos``, with labels of the procedure and ranges inside the video (BadInput
        otherwise; ``checked`` says the caller ran :func:`check_event` on every event against
        the procedure's labels and its video already, so it is not run again). ``offsets``
        (``{"topic:partition": next_offset}``) are merged with the parent's, keeping the
        maximum. With nothing new, nothing is written and ``version`` is
        None. If another writer publishes first, the commit is carried onto that version when
        the versions in between touched none of its videos and applied none of its events, and
        rebuilt on it otherwise; then publishing is retried.
        """
        labels = ProcedureCatalog(self.home).get(dataset).labels
        self.dataset_dir(dataset)
        for v in videos:
            if not dataset_takes(dataset, v.procedure):
                raise BadInput(f"video {v.video_id!r} is a {v.procedure!r} video; it cannot join "
                               f"dataset {dataset!r}")
        batch: dict[str, LabelEvent] = {}
        for e in events:
            batch.setdefault(e.event_id, e)
        built: _Built | None = None
        carried = rebuilt = 0
        spent = {"build": 0.0, "race": 0.0, "publish": 0.0}

        def result(version, parent, applied, fingerprint, added, attempt) -> CommitResult:
            return CommitResult(dataset, version, parent, applied, len(events) - applied, added,
                                attempt, fingerprint, carried, rebuilt, spent["build"],
                                spent["race"], spent["publish"])

        for attempt in range(max_retries + 1):
            t0 = time.perf_counter()
            latest = self.latest_version(dataset)
            parent = self.manifest(dataset, latest) if latest is not None else None
            if built is not None and parent is not None:
                # Lost a race: writers of disjoint videos commute, so the version built on
                # its base is carried onto the new parent instead of being rebuilt.
                built = self._rebased(dataset, built, parent, batch)
                if built is None:
                    rebuilt += 1
                    log.info("dataset %s: version %d changed videos or events of this commit; "
                             "rebuilding on it", dataset, parent.version)
                else:
                    carried += 1
                    log.debug("dataset %s: carried onto version %d", dataset, parent.version)
            if built is None:
                built = self._build(dataset, parent, videos, list(batch.values()), offsets,
                                    parked_events, None if checked else labels)
            t1 = time.perf_counter()
            spent["race" if attempt else "build"] += t1 - t0
            if built is None:
                return result(None, latest, 0, None, 0, attempt)
            manifest = built.manifest
            path = self._manifest_path(dataset, manifest.version)
            won = write_exclusive(path, json_bytes(manifest.model_dump(mode="json")))
            spent["publish"] += time.perf_counter() - t1
            if won:
                return result(manifest.version, latest, built.applied, manifest.fingerprint,
                              built.added, attempt)
            log.info("dataset %s: version %d was published by another writer; rebasing",
                     dataset, manifest.version)
        raise ConflictError(f"dataset {dataset!r}: lost the race to publish {max_retries + 1} "
                            "times in a row; try again")

    def _build(self, dataset: str, parent: Manifest | None, videos: list[VideoRecord],
               events: list[LabelEvent], offsets: dict[str, int], parked_events: int,
               labels: tuple[str, ...] | None) -> _Built | None:
        """Version N+1 on ``parent``; ``labels`` None: the events are checked already."""
        applied_ids = self._applied(dataset, parent, [e.event_id for e in events])
        new_events = [e for e in events if e.event_id not in applied_ids]
        wanted = sorted({v.video_id for v in videos} | {e.video_id for e in new_events})
        known = self._videos(dataset, parent, wanted)
        base_rows = self._interval_rows(dataset, parent, [v for v in wanted if v in known])
        fresh: dict[str, DatasetVideo] = {}
        for v in videos:
            if v.video_id not in known and v.video_id not in fresh:
                fresh[v.video_id] = DatasetVideo(record=v, split=split_of(v.video_id),
                                                content_hash="")
        if not new_events and not fresh:
            return None
        for e in new_events:
            video = known.get(e.video_id) or fresh.get(e.video_id)
            if video is None:
                raise BadInput(f"event {e.event_id!r} names video {e.video_id!r}, which is neither "
                               f"in dataset {dataset!r} nor among the videos of this commit")
            if labels is not None:
                check_event(e, labels, video.num_frames)
        touched = sorted({e.video_id for e in new_events} | set(fresh))
        known_touched = [v for v in touched if v in known]
        change = apply_events(
            base_rows.filter(pc.is_in(base_rows.column("video_id"),
                                      value_set=pa.array(known_touched, pa.string()))),
            new_events)
        stats = Stats(parent)
        stats.add_frames(*change.frames_before, sign=-1)
        changed: dict[str, DatasetVideo] = {}
        segments: dict[str, list[Segment]] = {}
        for vid in touched:
            new_segs = segments[vid] = change.after.get(vid, [])
            if vid in known:
                old = known[vid]
                stats.add_hash(old.content_hash, -1)
            else:
                old = fresh[vid]
                stats.add_video(old.source, old.split)
            h = video_hash(vid, old.sha256, new_segs)
            stats.add_labels(new_segs, h)
            changed[vid] = old.model_copy(update={"content_hash": h})
        new_run = {"videos": df.videos_table(list(changed.values())),
                   "intervals": change.intervals,
                   "segments": df.segments_table(segments),
                   "replaced": pa.table({"video_id": [v for v in touched if v in known]},
                                        schema=df.REPLACED_SCHEMA),
                   "events": df.events_table([(e.event_id, e.video_id) for e in new_events])}
        files = merge_runs(self.dataset_dir(dataset), list(parent.files) if parent else [],
                           new_run)
        merged_offsets = dict(parent.offsets) if parent else {}
        for k, off in offsets.items():
            merged_offsets[k] = max(off, merged_offsets.get(k, off))
        manifest = Manifest(
            dataset=dataset, version=(parent.version + 1) if parent else 1,
            parent=parent.version if parent else None, created_at=datetime.now(UTC),
            files=files, offsets=dict(sorted(merged_offsets.items())),
            events_applied=(parent.events_applied if parent else 0) + len(new_events),
            parked_events=parked_events, **stats.fields(),
        )
        return _Built(manifest, len(new_events), len(fresh), parent, frozenset(applied_ids),
                      known, wanted, base_rows)

    # ---- maintenance ---------------------------------------------------------------------

    def gc(self, grace_s: float = DEFAULT_GC_GRACE_S) -> dict:
        """Remove data files no manifest references, temp files and caches of no current run.

        Returns counts and ``removed``, the removed paths relative to the datasets folder.

        Only files older than ``grace_s`` seconds are removed, so a commit in flight (whose
        manifest is not linked yet) keeps its data files.
        """
        report: dict = {"removed_files": 0, "removed_bytes": 0, "kept_files": 0, "datasets": 0,
                        "removed": []}
        if not self.root.is_dir():
            return report
        cutoff = time.time() - grace_s
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and _DATASET.match(p.name)):
            report["datasets"] += 1
            numbers = self._version_numbers(d.name)
            files = {f for n in numbers for f in self.manifest(d.name, n).files}
            referenced = {f.path for f in files}
            derived = {derived_path(d, f).name for f in files if f.kind == "intervals"}
            for sub in ("data", "cache", "versions"):
                folder = d / sub
                if not folder.is_dir():
                    continue
                for p in folder.iterdir():
                    rel = f"{sub}/{p.name}"
                    orphan = (
                        p.name.startswith(".tmp-")
                        or (sub == "data" and rel not in referenced)
                        or (sub == "cache" and p.name not in derived)
                    )
                    st = p.stat()
                    if orphan and st.st_mtime < cutoff:
                        p.unlink(missing_ok=True)
                        report["removed_files"] += 1
                        report["removed_bytes"] += st.st_size
                        report["removed"].append(f"{d.name}/{rel}")
                    else:
                        report["kept_files"] += 1
        return report

    def verify(self, dataset: str, version: int | None = None) -> list[str]:
        """Problems with a version's data files (missing, wrong hash or row count); [] if none."""
        m = self.manifest(dataset, version)
        d, problems = self.dataset_dir(dataset), []
        for f in m.files:
            p = d / f.path
            if not p.is_file():
                problems.append(f"{f.path}: missing")
            elif hashlib.sha256(p.read_bytes()).hexdigest() != f.sha256:
                problems.append(f"{f.path}: sha256 differs from the manifest")
            elif pq.ParquetFile(p).metadata.num_rows != f.rows:
                problems.append(f"{f.path}: row count differs from the manifest")
        return problems

    # ---- carrying a commit onto a newer parent ---------------------------------------------

    def _rebased(self, dataset: str, built: _Built, parent: Manifest,
                 events: dict[str, LabelEvent]) -> _Built | None:
        """``built``, a child of its base, carried onto ``parent`` (a later version); None when
        a version in between holds other rows for one of the commit's videos or applied one
        of its events, so that the commit must be rebuilt.

        Versions that change disjoint videos commute: every statistic and the fingerprint are
        sums over videos, and a video's rows come from the latest run that holds it. So the
        rows ``built`` wrote for its videos are still right on top of ``parent``, and its
        statistics move by the same amounts there; no event is resolved again.

        Only the parent's data files that the base lacks are read: the others hold what the
        base held. A video none of those files holds has the base's rows in the parent too
        (a merged run that absorbed its latest run would hold it); where one does, the rows
        are compared.
        """
        manifest, base = built.manifest, built.base
        d = self.dataset_dir(dataset)
        had = set(base.files) if base is not None else set()
        newer = [run for run in parent.runs() if any(f not in had for f in run.values())]
        ids = list(events)
        for run in newer:
            if "events" in run and run["events"] not in had:
                found = df.read_data_file(d, run["events"], "event_id", ids)
                if not set(found.column("event_id").to_pylist()) <= built.done:
                    return None  # another writer applied one of these events
        wanted = built.wanted
        held_since = any(df.read_data_file(d, run[kind], "video_id", wanted).num_rows
                         for run in newer for kind in ("videos", "intervals")
                         if kind in run and run[kind] not in had)
        if held_since and (
                self._videos(dataset, parent, wanted) != built.known
                or not self._interval_rows(dataset, parent, [
                    v for v in wanted if v in built.known]).equals(built.base_rows)):
            return None
        new_ids = sorted(i for i in ids if i not in built.done)
        touched = sorted({events[i].video_id for i in new_ids}
                         | (set(wanted) - set(built.known)))
        # The run ``built`` wrote holds its videos' rows, plus those of any runs it merged;
        # only the former are carried (``parent`` has its own, possibly newer, copy of those).
        run = {kind: df.read_data_file(d, f, *(("event_id", new_ids) if kind == "events"
                                               else ("video_id", touched)))
               for kind, f in manifest.runs()[-1].items()}
        stats, mine, was = Stats(parent), Stats(manifest), Stats(base)
        for name in ("sources", "labels", "provenance", "splits"):
            getattr(stats, name).update(getattr(mine, name))
            getattr(stats, name).subtract(getattr(was, name))
        stats.videos += mine.videos - was.videos
        stats.total += mine.total - was.total
        offsets = dict(parent.offsets)
        for k, off in manifest.offsets.items():
            offsets[k] = max(off, offsets.get(k, off))
        rebased = Manifest(
            dataset=dataset, version=parent.version + 1, parent=parent.version,
            created_at=datetime.now(UTC), files=merge_runs(d, list(parent.files), run),
            offsets=dict(sorted(offsets.items())),
            events_applied=parent.events_applied + built.applied,
            parked_events=manifest.parked_events, **stats.fields(),
        )
        return replace(built, manifest=rebased, base=parent)


def _known(names: list[str]) -> str:
    return f"; datasets with versions: {', '.join(names) if names else '(none)'}"


__all__ = ["CommitResult", "DataFile", "DatasetState", "DatasetStore", "DatasetVideo",
           "Manifest", "parse_ref"]
