"""Clip index arithmetic and the samplers that order clips for training.

Everything here is pure arithmetic over frame numbers and item indices: no video is opened.

Frame numbers are always in the video's own numbering (the numbering labels use). A clip spec
asks for ``frames`` frames ``stride`` apart at a sampling rate ``fps``; at a video's rate
``video_fps`` one sampled frame is every ``step = round(video_fps / fps)`` source frames, so a
clip starting at source frame ``a`` reads ``a + i * stride * step`` for ``i < frames``. Clip
starts are multiples of ``step``, which is what lets a proxy that keeps every ``step``-th frame
serve the clip exactly (``surgflow.data.proxies``).

Samplers: decoding is sequential by nature (a random seek into a 250-frame GOP decodes up to 250
frames to deliver one), so :class:`ChunkedShuffleSampler` shuffles *chunks* of consecutive clips
of one video and hands each DataLoader worker whole runs of chunks to read in order;
:class:`WeightedDistributedSampler` is the plain weighted draw, sharded by rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Sampler

from surgflow.errors import BadInput


class ClipSpec(BaseModel):
    """What one training sample is: ``frames`` frames, ``stride`` apart, at ``fps``, ``size`` px.

    ``fps`` None samples at each video's own rate. ``hop`` is the distance between consecutive
    clip starts, in sampled frames; None means back-to-back clips (``frames * stride``). An
    unknown field is an error (a recipe's ``clip`` is this spec, and a typo must not pass).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: int = Field(16, ge=1, le=4096)
    stride: int = Field(1, ge=1, le=4096)
    fps: float | None = Field(None, gt=0)
    size: int = Field(112, ge=8, le=4096)
    hop: int | None = Field(None, ge=1)

    @property
    def hop_sampled(self) -> int:
        return self.hop if self.hop is not None else self.frames * self.stride


def frame_step(video_fps: float, fps: float | None) -> int:
    """Source frames per sampled frame: ``max(1, round(video_fps / fps))`` (1 when fps is None)."""
    if fps is None:
        return 1
    if not video_fps > 0:
        raise BadInput(f"video frame rate must be positive, got {video_fps}")
    return max(1, round(video_fps / fps))


def clip_span(spec: ClipSpec, step: int) -> int:
    """Source frames a clip covers, first to last inclusive."""
    return (spec.frames - 1) * spec.stride * step + 1


def clip_starts(num_frames: int, spec: ClipSpec, step: int) -> np.ndarray:
    """Start frames of every whole clip of a ``num_frames`` video: 0, h, 2h, ... (h = hop*step)."""
    last = num_frames - clip_span(spec, step)
    if last < 0:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, last + 1, spec.hop_sampled * step, dtype=np.int64)


def clip_frames(start: int, spec: ClipSpec, step: int) -> np.ndarray:
    """Source frame numbers a clip starting at ``start`` reads, in order."""
    return start + np.arange(spec.frames, dtype=np.int64) * (spec.stride * step)


def centre_frame(start: int | np.ndarray, spec: ClipSpec, step: int) -> int | np.ndarray:
    """The frame whose label is the clip's label: index ``frames // 2`` of the clip."""
    return start + (spec.frames // 2) * spec.stride * step


def chunk_ids(videos: np.ndarray, chunk_size: int) -> np.ndarray:
    """Chunk number of each item: runs of ``chunk_size`` consecutive items of one video.

    ``videos`` is the video of each item; items of a video must be contiguous and in frame order
    (as a resolved view lists them).
    """
    if chunk_size < 1:
        raise BadInput(f"chunk_size must be >= 1, got {chunk_size}")
    n = len(videos)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new_video = np.ones(n, dtype=bool)
    new_video[1:] = videos[1:] != videos[:-1]
    run_start = np.maximum.accumulate(np.where(new_video, np.arange(n), 0))
    pos_in_video = np.arange(n) - run_start
    new_chunk = new_video | (pos_in_video % chunk_size == 0)
    return np.cumsum(new_chunk) - 1


def chunked_order(
    items: np.ndarray, chunks: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``items`` reordered: chunks in random order, each chunk's items in their original order.

    ``chunks`` gives each item's chunk; an item may appear several times (weighted draws), and
    its copies stay together in frame order.
    """
    if len(items) == 0:
        return items
    order = np.lexsort((items, chunks[items]))  # by chunk, then frame order within the chunk
    by_chunk = items[order]
    ids, first = np.unique(chunks[by_chunk], return_index=True)
    bounds = np.append(first, len(by_chunk))
    perm = rng.permutation(len(ids))
    return np.concatenate([by_chunk[bounds[k] : bounds[k + 1]] for k in perm])


def shard(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of ``order``, padded by wrap-around to equal lengths."""
    if not 0 <= rank < world_size:
        raise BadInput(f"rank {rank} is outside world size {world_size}")
    if len(order) == 0:
        return order
    per_rank = math.ceil(len(order) / world_size)
    total = per_rank * world_size
    padded = np.resize(order, total) if total > len(order) else order
    return padded[rank * per_rank : (rank + 1) * per_rank]


def worker_streams(
    order: np.ndarray, chunks: np.ndarray, batch_size: int, num_workers: int, interleave: int
) -> np.ndarray:
    """Reorder one rank's items so that each DataLoader worker reads its own run in order.

    A DataLoader hands batch ``k`` to worker ``k % num_workers``. The rank's items are cut into
    ``num_workers`` contiguous parts of whole batches; part ``w`` becomes the batches of worker
    ``w``. Within a part, groups of ``interleave`` chunks are read round-robin, so a batch mixes
    that many videos while each video is still read forwards; this needs that many open
    readers per worker, which decord makes costly (see ``surgflow.data.clips``), so the default
    is 1.
    """
    workers = max(1, num_workers)
    n = len(order)
    if n == 0:
        return order
    n_batches = math.ceil(n / batch_size)
    per_worker = math.ceil(n_batches / workers) * batch_size
    parts = [order[w * per_worker : (w + 1) * per_worker] for w in range(workers)]
    parts = [_interleave_chunks(p, chunks, interleave) for p in parts if len(p)]
    out: list[np.ndarray] = []
    tail: list[np.ndarray] = []
    for k in range(max(math.ceil(len(p) / batch_size) for p in parts)):
        for p in parts:
            b = p[k * batch_size : (k + 1) * batch_size]
            if len(b) == batch_size:
                out.append(b)
            elif len(b):
                tail.append(b)  # a short batch would shift every later batch to another worker
    return np.concatenate(out + tail)


def _interleave_chunks(part: np.ndarray, chunks: np.ndarray, interleave: int) -> np.ndarray:
    if interleave <= 1 or len(part) == 0:
        return part
    cid = chunks[part]
    starts = np.flatnonzero(np.r_[True, cid[1:] != cid[:-1]])
    runs = np.split(part, starts[1:])
    out = []
    for g in range(0, len(runs), interleave):
        group = runs[g : g + interleave]
        longest = max(len(r) for r in group)
        for i in range(longest):
            out.extend(int(r[i]) for r in group if i < len(r))
    return np.asarray(out, dtype=part.dtype)


class ChunkedShuffleSampler(Sampler[int]):
    """Shuffles chunks of consecutive clips and gives each worker runs to read in order.

    ``videos[i]`` is the video of item ``i`` (items of a video contiguous, in frame order). Each
    epoch (``set_epoch``) the chunks are permuted with ``(seed, epoch)``; with ``weights`` the
    epoch's items are first drawn with replacement in proportion to the weights (``num_samples``
    of them), then ordered the same way, so balancing keeps sequential reads. The order is cut
    into ``world_size`` contiguous shares (padded by wrap-around) and, for ``num_workers`` > 0,
    arranged per worker as :func:`worker_streams` explains; pass the DataLoader's ``batch_size``
    and ``num_workers``.
    """

    def __init__(
        self,
        videos: Sequence[int] | np.ndarray,
        *,
        chunk_size: int = 16,
        seed: int = 0,
        weights: Sequence[float] | np.ndarray | None = None,
        num_samples: int | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        interleave: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.videos = np.asarray(videos, dtype=np.int64)
        self.chunks = chunk_ids(self.videos, chunk_size)
        self.seed, self.epoch = seed, 0
        self.weights = _check_weights(weights, len(self.videos)) if weights is not None else None
        self.num_samples = len(self.videos) if num_samples is None else int(num_samples)
        if batch_size < 1:
            raise BadInput(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers, self.interleave = batch_size, num_workers, interleave
        shard(np.zeros(0), rank, world_size)  # validates rank
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.videos)
        if self.weights is None:
            drawn = np.arange(n, dtype=np.int64)
        else:
            drawn = rng.choice(n, size=self.num_samples, replace=True, p=self.weights)
        order = shard(chunked_order(drawn, self.chunks, rng), self.rank, self.world_size)
        return worker_streams(
            order, self.chunks, self.batch_size, self.num_workers, self.interleave
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        total = len(self.videos) if self.weights is None else self.num_samples
        return math.ceil(total / self.world_size) if total else 0


class WeightedDistributedSampler(Sampler[int]):
    """Draws ``num_samples`` items per epoch with probability proportional to ``weights``.

    Every rank makes the same draw from ``(seed, epoch)`` and keeps items ``rank::world_size``,
    so ranks see disjoint positions of one global draw and all get ``ceil(num_samples /
    world_size)`` items. Call ``set_epoch`` each epoch.
    """

    def __init__(
        self,
        weights: Sequence[float] | np.ndarray,
        *,
        num_samples: int | None = None,
        replacement: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        w = np.asarray(weights, dtype=np.float64)
        self.p = _check_weights(w, len(w))
        self.num_samples = len(w) if num_samples is None else int(num_samples)
        self.per_rank = math.ceil(self.num_samples / world_size)
        if not replacement and self.per_rank * world_size > np.count_nonzero(self.p):
            raise BadInput(
                f"cannot draw {self.per_rank * world_size} distinct items from "
                f"{np.count_nonzero(self.p)} with non-zero weight"
            )
        shard(np.zeros(0), rank, world_size)
        self.replacement, self.seed, self.epoch = replacement, seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.per_rank * self.world_size
        drawn = rng.choice(len(self.p), size=total, replace=self.replacement, p=self.p)
        return drawn[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.per_rank


def _check_weights(weights: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise BadInput(f"expected {n} sample weights, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise BadInput("sample weights must be finite and non-negative")
    total = w.sum()
    if not total > 0:
        raise BadInput("sample weights sum to zero: nothing can be drawn")
    return w / total
