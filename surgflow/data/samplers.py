"""The torch samplers that order a view's clips for training, on the arithmetic of
:mod:`surgflow.data.clip_sampling`.

:class:`ChunkedShuffleSampler` shuffles *chunks* of consecutive clips of one video and hands each
DataLoader worker whole runs of chunks to read in order (decoding is sequential by nature);
:class:`WeightedDistributedSampler` is the plain weighted draw, sharded by rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from surgflow.data.clip_sampling import chunk_ids, chunked_order, shard, worker_streams
from surgflow.errors import BadInput


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
