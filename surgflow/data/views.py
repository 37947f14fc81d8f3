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
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from surgflow.data.balancing import Balance, balance, check_params, shares
from surgflow.data.clip_sampling import ClipSpec, centre_frame, clip_starts, frame_step
from surgflow.data.datafiles import QUERY_VIDEOS_SCHEMA, DatasetVideo
from surgflow.data.privacy import OUT_OF_BODY, PRIVACY
from surgflow.data.segments import SEGMENT_COLUMNS, Relation
from surgflow.data.versions import parse_ref
from surgflow.errors import BadInput, NotFound

if TYPE_CHECKING:
    from surgflow.data.samplers import ChunkedShuffleSampler


class SegmentStore(Protocol):
    """What a view needs from the dataset store (:class:`surgflow.data.versions.DatasetStore`).

    ``relation(dataset, version, "videos")`` is the version's own snapshot of its videos
    (registry columns plus ``path`` and ``split``), so a view of a version always reads what
    that version recorded; ``relation(dataset, version)`` its ``segments``.
    """

    def latest_version(self, dataset: str) -> int | None: ...

    def relation(self, dataset: str, version: int | None = None,
                 kind: str = "segments") -> Relation: ...

    def latest_version_before(self, dataset: str, at) -> int | None: ...

    def manifest(self, dataset: str, version: int | None = None): ...


class ViewSpec(BaseModel):
    """Which labelled clips to read (see the module docstring); a recipe's ``data`` section.

    Invalid values raise pydantic's ValidationError (a ValueError) naming the field, so that a
    recipe's error names ``data.<field>``; unknown fields are refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[str] = Field(
        min_length=1, description='dataset versions to mix: "dataset@N" or "dataset" (latest)'
    )
    filter: str | None = Field(
        default=None, description="SQL condition over each labelled segment joined with its video"
    )
    min_confidence: float | None = Field(
        default=0.8, ge=0.0, le=1.0,
        description="lowest confidence of a model label to keep; null: human labels only",
    )
    split: Literal["train", "val", "test"] | None = Field(
        default=None, description="only the videos of this split; null: every split"
    )
    balance: str = Field(default="inverse_frequency", description="balancing strategy")
    balance_by: Literal["label", "source", "video"] = "label"
    balance_params: dict[str, float] = Field(default_factory=dict)
    clip: ClipSpec = ClipSpec()
    seed: int = Field(default=0, description="seeds the order clips are sampled in")
    out_of_body: Literal["exclude", "keep"] = Field(
        default="exclude",
        description="exclude: no clip is centred on a frame the privacy track calls out of "
                    "the body (such frames are no phase); keep: ignore the privacy track")

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        for s in v:
            try:
                parse_ref(s)
            except BadInput as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("balance")
    @classmethod
    def _balance(cls, v: str) -> str:
        try:
            check_params(v, {})
        except BadInput as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _balance_params(self) -> ViewSpec:
        try:
            check_params(self.balance, self.balance_params)
        except BadInput as e:
            raise ValueError(str(e)) from None
        return self


class ViewVideo(DatasetVideo):
    """A video of a view: the snapshot of it that its source version holds (the record's
    fields read through: ``v.path``, ``v.fps``, ``v.source``) and that version, ``dataset`` at
    ``version``. A row of the version's ``videos`` file with the two builds one."""

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
        from surgflow.data.samplers import ChunkedShuffleSampler  # torch: training only

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


def pin_source(store: SegmentStore, text: str) -> tuple[str, int]:
    """``dataset@N`` → (dataset, N); a bare ``dataset`` → its latest version (NotFound if none)."""
    dataset, version = parse_ref(text)
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

    DuckDB selects the kept segments from the versions' files and streams them, by video, to
    the clip arithmetic: memory follows the clips the view makes, not the datasets it reads.
    """
    with _Selection(spec, store) as sel:
        return _clips(spec, sel, procedure_labels)


def footprint(spec: ViewSpec, home: Path) -> tuple[int, set[str]]:
    """The labelled frames ``spec`` selects and the sources of their videos (no clips built):
    what data triggers compare between versions."""
    from surgflow.data.versions import DatasetStore

    with _Selection(spec, DatasetStore(home)) as sel:
        frames = sel.con.execute("SELECT sum(end_frame - start_frame) FROM kept").fetchone()[0]
        sources = sel.con.execute("SELECT DISTINCT v.source FROM view_videos v "
                                  "SEMI JOIN kept k USING (video_id)").fetchall()
    return int(frames or 0), {str(r[0]) for r in sources}


def resolve_view(spec: ViewSpec, home: Path) -> ResolvedView:
    """:func:`resolve` over the datasets under ``home``, classes ordered by the taxonomies."""
    from surgflow.data.taxonomy import ProcedureCatalog
    from surgflow.data.versions import DatasetStore

    catalog = ProcedureCatalog(home)
    taxonomies = {p.name: p.labels for p in catalog.list()}
    return resolve(spec, DatasetStore(home), taxonomies)


class _Selection:
    """A sandboxed DuckDB connection over a view's pinned sources, with these views:

    - ``view_videos``: every video of the sources, from the first source that holds it, with
      ``src`` (the source's index);
    - ``videos``: the same with the columns of ``data query``'s ``videos`` table plus ``split``
      (what a filter may name beside the segment columns);
    - ``segments``: the segments of those videos, from that same source;
    - ``kept``: the segments the split, the confidence rule and the SQL filter keep;
    - ``out_of_body``: the OutOfBody segments of the privacy track (:func:`privacy_mask`).
    """

    def __init__(self, spec: ViewSpec, store: SegmentStore):
        import duckdb

        from surgflow.data.sql import check_read_only, lock_down, one_line

        self.sources = [pin_source(store, text) for text in spec.sources]
        rels = [(store.relation(d, v, "videos"), store.relation(d, v))
                for d, v in self.sources]
        self.con = con = duckdb.connect(config={"threads": 2})
        try:
            for i, (vid, seg) in enumerate(rels):
                con.execute(f"CREATE VIEW vid_{i} AS {vid.sql}")
                con.execute(f"CREATE VIEW seg_{i} AS {seg.sql}")
            con.execute("CREATE VIEW view_videos AS " + " UNION ALL ".join(
                f"SELECT *, {i} AS src FROM vid_{i}" + (
                    " ANTI JOIN (" + " UNION ALL ".join(
                        f"SELECT video_id FROM vid_{j}" for j in range(i)) + ") USING (video_id)"
                    if i else "")
                for i in range(len(rels))))
            con.execute("CREATE VIEW segments AS " + " UNION ALL ".join(
                f"SELECT s.* FROM seg_{i} s SEMI JOIN view_videos o "
                f"ON s.video_id = o.video_id AND o.src = {i}" for i in range(len(rels))))
            video_cols = ", ".join([*QUERY_VIDEOS_SCHEMA.names, "split"])
            con.execute(f"CREATE VIEW videos AS SELECT {video_cols} FROM view_videos")
            kept = _kept_sql(spec)
            try:
                check_read_only(kept)
            except BadInput as e:
                raise BadInput(f"view filter {spec.filter!r} must be one boolean expression "
                               f"({e})") from e
            con.execute(f"CREATE VIEW kept AS {kept}")
            self.mask = privacy_mask(spec, store, self.sources)
            masks = [store.relation(*self.mask)] if self.mask else []
            con.execute("CREATE VIEW out_of_body AS " + (
                f"SELECT video_id, start_frame, end_frame FROM ({masks[0].sql}) "
                f"WHERE label = '{OUT_OF_BODY}'" if masks else
                "SELECT NULL::VARCHAR AS video_id, 0 AS start_frame, 0 AS end_frame LIMIT 0"))
            files = {f for pair in rels for r in pair for f in r.files}
            lock_down(con, sorted(files | {f for r in masks for f in r.files}))
            con.execute("SELECT * FROM kept LIMIT 0")  # a bad filter fails here, by name
        except duckdb.Error as e:
            con.close()
            raise BadInput(f"view filter {spec.filter!r} failed: {one_line(e)}") from e
        except BaseException:
            con.close()
            raise

    def __enter__(self) -> _Selection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()

    def records(self, split: str | None) -> dict[str, dict]:
        """The snapshots, with ``src``, of the videos of ``split`` (None: all): one read of
        the small ``videos`` files, where narrowing them to ``kept``'s videos would evaluate
        the view's filter a second time."""
        where = f" WHERE split = '{split}'" if split is not None else ""
        t = self.con.sql(f"SELECT * FROM view_videos{where}").to_arrow_table()
        return {r["video_id"]: r for r in t.to_pylist()}

    def out_of_body(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per video, the sorted starts and ends of its out-of-body ranges."""
        t = self.con.sql("SELECT video_id, start_frame, end_frame FROM out_of_body "
                         "ORDER BY video_id, start_frame").to_arrow_table()
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        ids = t.column(0).to_pylist()
        starts, ends = t.column(1).to_numpy(), t.column(2).to_numpy()
        for vid, group in itertools.groupby(range(len(ids)), key=ids.__getitem__):
            rows = list(group)
            out[vid] = (starts[rows], ends[rows])
        return out

    def batches(self, rows: int = 1 << 16):
        """``kept`` ordered by video and start frame, in Arrow record batches."""
        return self.con.sql(
            "SELECT video_id, start_frame, end_frame, label FROM kept "
            "ORDER BY video_id, start_frame").to_arrow_reader(rows)


def privacy_mask(spec: ViewSpec, store: SegmentStore,
                 sources: list[tuple[str, int]]) -> tuple[str, int] | None:
    """The privacy-track version whose OutOfBody frames the view excludes, or None.

    The version is the newest one written no later than the newest of the view's pinned
    sources: what was known of the videos' privacy when their labels were, so a pinned view
    resolves to the same clips on every rank and every restart, whatever is screened since.
    """
    if spec.out_of_body == "keep" or all(d == PRIVACY for d, _ in sources):
        return None
    written = max(store.manifest(d, v).created_at for d, v in sources)
    known = store.latest_version_before(PRIVACY, written)
    return (PRIVACY, known) if known is not None else None


def _kept_sql(spec: ViewSpec) -> str:
    where = ["s.provenance = 'human'" if spec.min_confidence is None else
             f"(s.provenance = 'human' OR s.confidence >= {float(spec.min_confidence)!r})"]
    if spec.split is not None:
        where.append(f"split = '{spec.split}'")
    if spec.filter:
        where.append(f"({spec.filter}\n)")
    cols = ", ".join(f"s.{c}" for c in SEGMENT_COLUMNS)
    return (f"SELECT {cols} FROM segments s JOIN videos USING (video_id) WHERE "
            + " AND ".join(where))


def _video_runs(batches, codes: dict[str, int]
                ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(video_id, starts, ends, label codes) per video from batches ordered by video; a
    label's code is its index in ``codes``, which grows in order of first appearance."""
    carry: list[pa.RecordBatch] = []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        ids = batch.column(0)
        last = ids[batch.num_rows - 1].as_py()
        if carry and carry[0].column(0)[0].as_py() != ids[0].as_py():
            yield from _split_videos(pa.Table.from_batches(carry), codes)
            carry = []
        if ids[0].as_py() == last:  # the whole batch is one video, maybe continued
            carry.append(batch)
            continue
        first_of_last = pc.index(ids, last).as_py()
        head, tail = batch.slice(0, first_of_last), batch.slice(first_of_last)
        yield from _split_videos(pa.Table.from_batches([*carry, head]), codes)
        carry = [tail]
    if carry:
        yield from _split_videos(pa.Table.from_batches(carry), codes)


def _split_videos(t: pa.Table, codes: dict[str, int]
                  ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    if t.num_rows == 0:
        return
    ids = pc.dictionary_encode(t.column(0).combine_chunks())
    starts = t.column(1).to_numpy()
    ends = t.column(2).to_numpy()
    labels = pc.dictionary_encode(t.column(3).combine_chunks())
    to_code = np.array([codes.setdefault(lbl, len(codes))
                        for lbl in labels.dictionary.to_pylist()], dtype=np.int64)
    label_codes = to_code[labels.indices.to_numpy()]
    video_index = ids.indices.to_numpy()
    names = ids.dictionary.to_pylist()
    cuts = [0, *(np.flatnonzero(video_index[1:] != video_index[:-1]) + 1).tolist(), len(t)]
    for a, b in itertools.pairwise(cuts):
        yield names[video_index[a]], starts[a:b], ends[a:b], label_codes[a:b]


def _clips(
    spec: ViewSpec,
    sel: _Selection,
    procedure_labels: dict[str, tuple[str, ...]] | None,
) -> ResolvedView:
    records = sel.records(spec.split)
    found: dict[str, int] = {}  # label -> index in order of first appearance
    view_videos: list[ViewVideo] = []
    vids, starts, labels = [], [], []
    masked = sel.out_of_body()
    for vid, seg_start, seg_end, local in _video_runs(sel.batches(), found):
        rec = records[vid]
        step = frame_step(rec["fps"], spec.clip.fps)
        st = clip_starts(rec["num_frames"], spec.clip, step)
        centre = centre_frame(st, spec.clip, step)
        k = np.searchsorted(seg_start, centre, side="right") - 1
        ok = (k >= 0) & (centre < seg_end[np.maximum(k, 0)])
        if vid in masked:
            o_start, o_end = masked[vid]
            j = np.searchsorted(o_start, centre, side="right") - 1
            ok &= ~((j >= 0) & (centre < o_end[np.maximum(j, 0)]))
        if not ok.any():
            continue
        dataset, version = sel.sources[rec["src"]]
        view_videos.append(ViewVideo(**rec, dataset=dataset, version=version))
        vids.append(np.full(int(ok.sum()), len(view_videos) - 1, dtype=np.int64))
        starts.append(st[ok])
        labels.append(local[k[ok]])
    # a dataset is named after its procedure (or its label track), whose taxonomy orders it
    classes = _classes(sorted(found), [v.dataset for v in view_videos], procedure_labels)
    class_index = {c: i for i, c in enumerate(classes)}
    to_class = np.array([class_index[lbl] for lbl in found], dtype=np.int64)
    video = np.concatenate(vids) if vids else np.zeros(0, dtype=np.int64)
    start = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    label = to_class[np.concatenate(labels)] if labels else np.zeros(0, dtype=np.int64)
    keys = _balance_keys(spec.balance_by, video, label, view_videos, classes)
    bal = balance(keys, spec.balance, **spec.balance_params)
    label_names = [classes[i] for i in label]
    natural = shares(label_names, np.ones(len(label_names)))
    achieved = shares(label_names, bal.weights)
    label_shares = {c: {"natural": natural[c], "achieved": achieved[c]} for c in sorted(natural)}
    return ResolvedView(
        spec=spec, sources=sel.sources, videos=view_videos, classes=classes, video=video,
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
