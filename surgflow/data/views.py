"""Dataset views: mix dataset versions, filter, balance, and cut into clips.

A :class:`ViewSpec` names one or more ``dataset@version`` sources (``dataset`` alone means its
latest version), an optional SQL filter, a minimum confidence for model labels (None: human
labels only), a split, a balancing strategy and the key it balances (label, source or video),
the clip spec and a seed. :func:`resolve` turns it, deterministically, into clip start indices
with the label of each clip's centre frame, per-sample weights, and the achieved distribution
next to the target.

The filter is a SQL boolean expression evaluated by DuckDB on each labelled segment joined with
its video, i.e. over the columns of ``surgflow data query``'s two tables: ``dataset, version,
video_id, start_frame, end_frame, label, provenance, confidence`` and ``uri, sha256, procedure,
source, recorded_at, num_frames, fps, width, height``; e.g. ``source = 'hospital-a' AND label <>
'Preparation'``. A frame whose segment is filtered out has no label, so no clip is centred on it.

A video that appears in several sources is taken from the first source listed that holds it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

from surgflow.data.balancing import Balance, balance, check_params, shares
from surgflow.data.clip_sampling import (
    ChunkedShuffleSampler,
    ClipSpec,
    centre_frame,
    clip_starts,
    frame_step,
)
from surgflow.data.taxonomy import NAME_PATTERN
from surgflow.errors import BadInput, NotFound

_SOURCE = re.compile(f"^(?P<dataset>{NAME_PATTERN})(?:@(?P<version>[1-9][0-9]*))?$")
SEGMENT_COLUMNS = ("dataset", "version", "video_id", "start_frame", "end_frame", "label",
                   "provenance", "confidence")


class SegmentStore(Protocol):
    """What a view needs from the dataset store (:class:`surgflow.data.versions.DatasetStore`).

    ``videos_table`` is the version's own snapshot of its videos (registry columns plus
    ``path`` and ``split``), so a view of a version always reads what that version recorded.
    """

    def latest_version(self, dataset: str) -> int | None: ...

    def segments_table(self, dataset: str, version: int) -> pa.Table: ...

    def videos_table(self, dataset: str, version: int) -> pa.Table: ...


class ViewSpec(BaseModel, frozen=True):
    """A recipe's description of its data (see the module docstring)."""

    sources: list[str] = Field(min_length=1)
    filter: str | None = None
    min_confidence: float | None = Field(None, ge=0.0, le=1.0)
    split: Literal["train", "val", "test"] | None = None
    balance: str = "none"
    balance_by: Literal["label", "source", "video"] = "label"
    balance_params: dict[str, float] = Field(default_factory=dict)
    clip: ClipSpec = ClipSpec()
    seed: int = 0

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        for s in v:
            if not _SOURCE.match(s):
                raise ValueError(f"source {s!r} must be 'dataset' or 'dataset@version'")
        return v

    @field_validator("balance")
    @classmethod
    def _balance(cls, v: str) -> str:
        check_params(v, {})
        return v

    def model_post_init(self, _context: object) -> None:
        check_params(self.balance, self.balance_params)


@dataclass(frozen=True)
class ViewVideo:
    """A video of a view, with what the loader needs to read it."""

    video_id: str
    path: str
    sha256: str
    fps: float
    num_frames: int
    width: int
    height: int
    procedure: str
    source: str
    split: str
    dataset: str
    version: int


@dataclass(frozen=True)
class ResolvedView:
    """Clips of a view: ``video[i]`` (index into ``videos``), ``start[i]``, ``label[i]`` (index
    into ``classes``, the centre frame's label) and ``weights[i]`` (mean 1)."""

    spec: ViewSpec
    sources: list[tuple[str, int]]
    videos: list[ViewVideo]
    classes: tuple[str, ...]
    video: np.ndarray
    start: np.ndarray
    label: np.ndarray
    weights: np.ndarray
    balance: Balance
    label_shares: dict[str, dict[str, float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.start)

    def digest(self) -> str:
        """sha256 of the clip spec, clip list and weights: equal views give equal digests."""
        h = hashlib.sha256(self.spec.clip.model_dump_json().encode())
        h.update("\n".join(f"{v.video_id}:{v.sha256}" for v in self.videos).encode())
        h.update("\n".join(self.classes).encode())
        for a in (self.video, self.start, self.label):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(np.round(self.weights, 12).tobytes())
        return h.hexdigest()

    def sampler(
        self,
        *,
        batch_size: int = 1,
        num_workers: int = 0,
        chunk_size: int = 16,
        interleave: int = 1,
        rank: int = 0,
        world_size: int = 1,
        num_samples: int | None = None,
    ) -> ChunkedShuffleSampler:
        """The view's training sampler: chunked shuffle seeded by the spec, weighted draws when
        the view balances (``num_samples`` per epoch, default the number of clips)."""
        weighted = self.spec.balance != "none"
        return ChunkedShuffleSampler(
            self.video, chunk_size=chunk_size, seed=self.spec.seed,
            weights=self.weights if weighted else None, num_samples=num_samples,
            batch_size=batch_size, num_workers=num_workers, interleave=interleave, rank=rank,
            world_size=world_size,
        )

    def report(self) -> dict:
        """JSON summary: sources, counts, and the balanced key's target vs achieved shares."""
        return {
            "sources": [f"{d}@{v}" for d, v in self.sources],
            "videos": len(self.videos),
            "clips": len(self),
            "balance": self.spec.balance,
            "balance_by": self.spec.balance_by,
            "distribution": self.balance.table(),
            "labels": self.label_shares,
            "digest": self.digest(),
        }


def parse_source(text: str) -> tuple[str, int | None]:
    m = _SOURCE.match(text)
    if not m:
        raise BadInput(f"source {text!r} must be 'dataset' or 'dataset@version'")
    return m["dataset"], int(m["version"]) if m["version"] else None


def pin_source(store: SegmentStore, text: str) -> tuple[str, int]:
    """``dataset@N`` → (dataset, N); a bare ``dataset`` → its latest version (NotFound if none)."""
    dataset, version = parse_source(text)
    if version is None:
        version = store.latest_version(dataset)
        if version is None:
            raise NotFound(f"dataset {dataset!r} has no version yet")
    return dataset, version


def resolve(
    spec: ViewSpec,
    store: SegmentStore,
    procedure_labels: dict[str, tuple[str, ...]] | None = None,
) -> ResolvedView:
    """Resolve ``spec`` against ``store``: its segments and its versions' video snapshots.

    ``procedure_labels`` maps a procedure to its taxonomy, which orders ``classes`` (labels of
    several procedures are concatenated in order of procedure name, each label once); without
    it, the labels present are sorted by name.
    """
    sources, segments, records = _select(spec, store)
    return _clips(spec, sources, segments, records, procedure_labels)


def footprint(spec: ViewSpec, home: Path) -> tuple[int, set[str]]:
    """The labelled frames ``spec`` selects and the sources of their videos (no clips built):
    what data triggers compare between versions."""
    import pyarrow.compute as pc

    from surgflow.data.versions import DatasetStore

    _, segments, records = _select(spec, DatasetStore(home))
    frames = pc.sum(pc.subtract(segments["end_frame"], segments["start_frame"])).as_py() or 0
    videos = set(segments.column("video_id").to_pylist())
    return int(frames), {str(records[v]["source"]) for v in videos}


def _select(spec: ViewSpec,
            store: SegmentStore) -> tuple[list[tuple[str, int]], pa.Table, dict[str, dict]]:
    """The pinned sources, the segments the view keeps and the video records they name."""
    sources, seg_tables, video_tables = [], [], []
    for text in spec.sources:
        dataset, version = pin_source(store, text)
        sources.append((dataset, version))
        seg_tables.append(store.segments_table(dataset, version).select(list(SEGMENT_COLUMNS)))
        video_tables.append(store.videos_table(dataset, version))
    segments = _first_source_wins(seg_tables)
    records: dict[str, dict] = {}
    for t in video_tables:
        for row in t.to_pylist():
            records.setdefault(row["video_id"], row)
    missing = set(segments.column("video_id").to_pylist()) - set(records)
    if missing:
        raise NotFound(f"segments name videos missing from their version: {sorted(missing)[:5]}")
    return sources, _keep(segments, records, spec), records


def resolve_view(spec: ViewSpec, home: Path) -> ResolvedView:
    """:func:`resolve` over the datasets under ``home``, classes ordered by the taxonomies."""
    from surgflow.data.taxonomy import ProcedureCatalog
    from surgflow.data.versions import DatasetStore

    catalog = ProcedureCatalog(home)
    taxonomies = {p.name: p.labels for p in catalog.list()}
    return resolve(spec, DatasetStore(home), taxonomies)


def _first_source_wins(tables: list[pa.Table]) -> pa.Table:
    import pyarrow.compute as pc

    seen: set[str] = set()
    kept = []
    for t in tables:
        ids = set(t.column("video_id").to_pylist())
        if seen:
            t = t.filter(pc.invert(pc.is_in(t["video_id"], pa.array(sorted(seen), pa.string()))))
        kept.append(t)
        seen |= ids
    return pa.concat_tables(kept)


VIDEO_COLUMNS = ("video_id", "uri", "sha256", "procedure", "source", "recorded_at", "num_frames",
                 "fps", "width", "height", "split")


def videos_table(records: dict[str, dict]) -> pa.Table:
    """The ``videos`` table of ``surgflow data query`` (plus ``split``) for these videos."""
    schema = pa.schema([("video_id", pa.string()), ("uri", pa.string()), ("sha256", pa.string()),
                        ("procedure", pa.string()), ("source", pa.string()),
                        ("recorded_at", pa.timestamp("us", tz="UTC")), ("num_frames", pa.int64()),
                        ("fps", pa.float64()), ("width", pa.int64()), ("height", pa.int64()),
                        ("split", pa.string())])
    return pa.Table.from_pylist([{c: r.get(c) for c in VIDEO_COLUMNS} for r in records.values()],
                                schema=schema)


def _keep(segments: pa.Table, records: dict[str, dict], spec: ViewSpec) -> pa.Table:
    """Rows the split, the confidence rule and the SQL filter keep."""
    import pyarrow.compute as pc

    if spec.split is not None:
        in_split = [vid for vid, r in records.items() if r["split"] == spec.split]
        segments = segments.filter(pc.is_in(segments["video_id"], pa.array(in_split, pa.string())))
    human = pc.equal(segments["provenance"], "human")
    if spec.min_confidence is None:
        segments = segments.filter(human)
    else:
        confident = pc.greater_equal(segments["confidence"], spec.min_confidence)
        segments = segments.filter(pc.or_(human, pc.fill_null(confident, False)))
    if spec.filter:
        segments = sql_filter(segments, videos_table(records), spec.filter)
    return segments


def sql_filter(segments: pa.Table, videos: pa.Table, expression: str) -> pa.Table:
    """Rows of ``segments`` for which ``expression`` holds on the segment joined with its video.

    DuckDB runs it read-only: one SELECT statement, no file system access.
    """
    import duckdb

    from surgflow.data.sql import check_read_only, lock_down, one_line

    cols = ", ".join(f"s.{c}" for c in SEGMENT_COLUMNS)
    sql = (f"SELECT {cols} FROM segments s JOIN videos USING (video_id) WHERE ({expression})\n"
           "ORDER BY s.video_id, s.start_frame")
    try:
        check_read_only(sql)
    except BadInput as e:
        raise BadInput(f"view filter {expression!r} must be one boolean expression ({e})") from e
    con = duckdb.connect()
    try:
        con.register("segments", segments)
        con.register("videos", videos)
        lock_down(con)
        return con.sql(sql).to_arrow_table().cast(segments.schema)
    except duckdb.Error as e:
        raise BadInput(f"view filter {expression!r} failed: {one_line(e)}") from e
    finally:
        con.close()


def _clips(
    spec: ViewSpec,
    sources: list[tuple[str, int]],
    segments: pa.Table,
    records: dict[str, dict],
    procedure_labels: dict[str, tuple[str, ...]] | None,
) -> ResolvedView:
    by_video: dict[str, list[tuple[int, int, str]]] = {}
    origin: dict[str, tuple[str, int]] = {}
    for row in segments.to_pylist():
        by_video.setdefault(row["video_id"], []).append(
            (row["start_frame"], row["end_frame"], row["label"])
        )
        origin[row["video_id"]] = (row["dataset"], row["version"])
    classes = _classes(sorted({lbl for segs in by_video.values() for *_, lbl in segs}),
                       [records[v]["procedure"] for v in by_video], procedure_labels)
    class_index = {c: i for i, c in enumerate(classes)}
    view_videos: list[ViewVideo] = []
    vids, starts, labels = [], [], []
    for vid in sorted(by_video):
        rec = records[vid]
        segs = sorted(by_video[vid])
        seg_start = np.array([s for s, _, _ in segs])
        seg_end = np.array([e for _, e, _ in segs])
        step = frame_step(rec["fps"], spec.clip.fps)
        st = clip_starts(rec["num_frames"], spec.clip, step)
        centre = centre_frame(st, spec.clip, step)
        k = np.searchsorted(seg_start, centre, side="right") - 1
        ok = (k >= 0) & (centre < seg_end[np.maximum(k, 0)])
        if not ok.any():
            continue
        dataset, version = origin[vid]
        view_videos.append(ViewVideo(
            video_id=vid, path=rec["path"], sha256=rec["sha256"], fps=rec["fps"],
            num_frames=rec["num_frames"], width=rec["width"], height=rec["height"],
            procedure=rec["procedure"], source=rec["source"], split=rec["split"],
            dataset=dataset, version=version,
        ))
        vids.append(np.full(int(ok.sum()), len(view_videos) - 1, dtype=np.int64))
        starts.append(st[ok])
        labels.append(np.array([class_index[segs[j][2]] for j in k[ok]], dtype=np.int64))
    video = np.concatenate(vids) if vids else np.zeros(0, dtype=np.int64)
    start = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    label = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    keys = _balance_keys(spec.balance_by, video, label, view_videos, classes)
    bal = balance(keys, spec.balance, **spec.balance_params)
    label_names = [classes[i] for i in label]
    natural = shares(label_names, np.ones(len(label_names)))
    achieved = shares(label_names, bal.weights)
    label_shares = {c: {"natural": natural[c], "achieved": achieved[c]} for c in sorted(natural)}
    return ResolvedView(
        spec=spec, sources=sources, videos=view_videos, classes=classes, video=video,
        start=start, label=label, weights=bal.weights, balance=bal, label_shares=label_shares,
    )


def _balance_keys(by: str, video: np.ndarray, label: np.ndarray, videos: list[ViewVideo],
                  classes: tuple[str, ...]) -> list[str]:
    if by == "label":
        return [classes[i] for i in label]
    if by == "source":
        return [videos[i].source for i in video]
    return [videos[i].video_id for i in video]


def _classes(present: list[str], procedures: list[str],
             procedure_labels: dict[str, tuple[str, ...]] | None) -> tuple[str, ...]:
    if not procedure_labels:
        return tuple(present)
    out: list[str] = []
    for proc in sorted(set(procedures)):
        if proc not in procedure_labels:
            raise NotFound(f"no taxonomy given for procedure {proc!r}")
        out.extend(lbl for lbl in procedure_labels[proc] if lbl not in out)
    missing = sorted(set(present) - set(out))
    if missing:
        raise BadInput(f"labels {missing} are not in the taxonomies of {sorted(set(procedures))}")
    return tuple(out)
