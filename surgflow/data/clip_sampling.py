"""Clip index arithmetic: which frames a clip reads, and the order training reads clips in.

Everything here is pure arithmetic over frame numbers and item indices: no video is opened and
no torch is imported (the chain bundle's spec and the ONNX runner read :class:`ClipSpec`); the
torch samplers built on this arithmetic are :mod:`surgflow.data.samplers`.

Frame numbers are always in the video's own numbering (the numbering labels use). A clip spec
asks for ``frames`` frames ``stride`` apart at a sampling rate ``fps``; at a video's rate
``video_fps`` one sampled frame is every ``step = round(video_fps / fps)`` source frames, so a
clip starting at source frame ``a`` reads ``a + i * stride * step`` for ``i < frames``. Clip
starts are multiples of ``step``, which is what lets a proxy that keeps every ``step``-th frame
serve the clip exactly (``surgflow.data.proxies``).

Reading order: decoding is sequential by nature (a random seek into a 250-frame GOP decodes up
to 250 frames to deliver one), so training shuffles *chunks* of consecutive clips of one video
(:func:`chunk_ids`, :func:`chunked_order`) and hands each DataLoader worker whole runs of chunks
to read in order (:func:`worker_streams`).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

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
