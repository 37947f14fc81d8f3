"""Clip index arithmetic and samplers, checked against reference formulas."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from surgflow.data.clip_sampling import (
    ClipSpec,
    centre_frame,
    chunk_ids,
    clip_frames,
    clip_starts,
    frame_step,
)
from surgflow.data.samplers import ChunkedShuffleSampler, WeightedDistributedSampler
from surgflow.errors import BadInput


@given(
    num_frames=st.integers(0, 400), frames=st.integers(1, 20), stride=st.integers(1, 5),
    video_fps=st.sampled_from([25.0, 30.0, 29.97, 50.0]), fps=st.sampled_from([None, 1.0, 5.0]),
    hop=st.one_of(st.none(), st.integers(1, 30)),
)
@settings(max_examples=200, deadline=None)
def test_clip_starts_match_the_reference_enumeration(num_frames, frames, stride, video_fps, fps,
                                                     hop):
    spec = ClipSpec(frames=frames, stride=stride, fps=fps, hop=hop, size=32)
    step = frame_step(video_fps, fps)
    assert step == (1 if fps is None else max(1, round(video_fps / fps)))
    h = (hop if hop is not None else frames * stride) * step
    # reference: every start a multiple of h whose last frame is inside the video
    expected = [s for s in range(0, num_frames, h) if s + (frames - 1) * stride * step < num_frames]
    starts = clip_starts(num_frames, spec, step)
    assert starts.tolist() == expected
    for s in expected[:3]:
        f = clip_frames(s, spec, step)
        assert f.tolist() == [s + i * stride * step for i in range(frames)]
        assert centre_frame(s, spec, step) == f[frames // 2]
        assert all(x % step == 0 for x in f)  # on a proxy's grid


def test_clip_spec_rejects_nonsense():
    with pytest.raises(ValueError, match="frames"):
        ClipSpec(frames=0)
    with pytest.raises(ValueError, match="fps"):
        ClipSpec(fps=-1)
    with pytest.raises(ValueError, match="frame\n  Extra inputs are not permitted"):
        ClipSpec(frame=8)  # a typo of frames is not silently the default 16


def _videos(lengths):
    return np.repeat(np.arange(len(lengths)), lengths)


def test_chunks_are_runs_of_one_video():
    videos = _videos([5, 1, 8])
    assert chunk_ids(videos, 3).tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 4, 4, 5, 5]


def _runs(order, chunks):
    """Split an order into maximal runs of one chunk."""
    cid = chunks[order]
    cuts = np.flatnonzero(cid[1:] != cid[:-1]) + 1
    return np.split(order, cuts)


def test_chunked_shuffle_is_a_permutation_of_whole_ordered_chunks():
    videos = _videos([37, 5, 64, 20, 1, 50])
    s = ChunkedShuffleSampler(videos, chunk_size=8, seed=3)
    order = np.array(list(s))
    assert sorted(order.tolist()) == list(range(len(videos)))
    runs = _runs(order, s.chunks)
    assert len(runs) == s.chunks.max() + 1  # every chunk read in one go
    for r in runs:
        assert np.all(np.diff(r) == 1)  # and in frame order
    assert order.tolist() == list(ChunkedShuffleSampler(videos, chunk_size=8, seed=3))
    assert order.tolist() != list(ChunkedShuffleSampler(videos, chunk_size=8, seed=4))
    s.set_epoch(1)
    assert list(s) != order.tolist()
    assert order.tolist() != sorted(order.tolist())


@given(world=st.integers(1, 5), n=st.integers(1, 300), chunk=st.integers(1, 20))
@settings(max_examples=60, deadline=None)
def test_chunked_shards_cover_everything_with_equal_lengths(world, n, chunk):
    videos = np.sort(np.random.default_rng(n).integers(0, 7, size=n))
    shards = [list(ChunkedShuffleSampler(videos, chunk_size=chunk, seed=1, rank=r,
                                         world_size=world)) for r in range(world)]
    assert {len(s) for s in shards} == {math.ceil(n / world)}
    assert all(len(s) == len(ChunkedShuffleSampler(videos, world_size=world)) for s in shards)
    merged = [i for s in shards for i in s]
    assert set(merged) == set(range(n))
    assert len(merged) - n < world  # padding only fills the last shard


def _worker_sequences(order, batch_size, workers):
    """What each DataLoader worker reads: batch k goes to worker k % workers."""
    seqs = [[] for _ in range(workers)]
    for k in range(math.ceil(len(order) / batch_size)):
        seqs[k % workers].extend(order[k * batch_size : (k + 1) * batch_size])
    return seqs


@pytest.mark.parametrize("interleave", [1, 3])
def test_each_worker_reads_every_video_forwards(interleave):
    videos = _videos([40, 23, 64, 7, 30, 50, 18])
    s = ChunkedShuffleSampler(videos, chunk_size=8, seed=0, batch_size=4, num_workers=2,
                              interleave=interleave)
    order = list(s)
    assert sorted(order) == list(range(len(videos)))
    readers: dict[int, set[int]] = {}
    for w, seq in enumerate(_worker_sequences(order, 4, 2)):
        for i in seq:
            readers.setdefault(int(s.chunks[i]), set()).add(w)
    split = [c for c, ws in readers.items() if len(ws) > 1]
    assert len(split) <= 2  # only where the two workers' shares meet, and the short tail
    for seq in _worker_sequences(order, 4, 2):
        per_video: dict[int, list[int]] = {}
        for i in seq:
            per_video.setdefault(int(videos[i]), []).append(i)
        for items in per_video.values():
            # forward within each chunk: a chunk's items come in increasing order
            chunks = s.chunks[items]
            for c in set(chunks.tolist()):
                run = [i for i in items if s.chunks[i] == c]
                assert run == sorted(run)
    if interleave > 1:  # batches mix videos
        first = order[:4]
        assert len({int(videos[i]) for i in first}) > 1


class _WhoReads(Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        return torch.tensor([i, torch.utils.data.get_worker_info().id])


def test_real_dataloader_gives_each_worker_its_stream():
    videos = _videos([100, 300, 250, 350])
    sampler = ChunkedShuffleSampler(videos, chunk_size=16, seed=2, batch_size=8, num_workers=2)
    loader = DataLoader(_WhoReads(), batch_size=8, sampler=sampler, num_workers=2)
    got = torch.cat(list(loader)).numpy()
    expected = _worker_sequences(sampler.indices().tolist(), 8, 2)
    for w in (0, 1):
        assert got[got[:, 1] == w, 0].tolist() == expected[w]


def test_weighted_chunked_sampler_draws_in_proportion_and_keeps_runs():
    videos = _videos([50, 50])
    weights = np.r_[np.full(50, 3.0), np.full(50, 1.0)]
    s = ChunkedShuffleSampler(videos, chunk_size=10, seed=5, weights=weights, num_samples=20000)
    order = np.array(list(s))
    assert len(order) == 20000
    share = np.mean(videos[order] == 0)
    assert abs(share - 0.75) < 0.02
    runs = _runs(order, s.chunks)
    assert len(runs) == s.chunks.max() + 1
    for r in runs:
        assert np.all(np.diff(r) >= 0)


def test_weighted_distributed_sampler_matches_the_reference_draw():
    weights = np.array([1.0, 0.0, 2.0, 5.0, 2.0])
    world, n = 3, 10
    shards = []
    for r in range(world):
        s = WeightedDistributedSampler(weights, num_samples=n, seed=9, rank=r, world_size=world)
        s.set_epoch(4)
        shards.append(list(s))
    per_rank = math.ceil(n / world)
    assert [len(x) for x in shards] == [per_rank] * world
    rng = np.random.default_rng([9, 4])
    reference = rng.choice(5, size=per_rank * world, p=weights / weights.sum())
    for r in range(world):
        assert shards[r] == reference[r::world].tolist()


def test_weighted_sampler_frequencies_follow_weights():
    weights = np.array([1.0, 0.0, 2.0, 5.0, 2.0])
    s = WeightedDistributedSampler(weights, num_samples=50_000, seed=1)
    counts = Counter(s)
    assert counts[1] == 0
    for i, w in enumerate(weights):
        expected = 50_000 * w / weights.sum()
        assert abs(counts[i] - expected) <= 4 * math.sqrt(expected + 1)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first


def test_samplers_reject_bad_input():
    with pytest.raises(BadInput, match="sum to zero"):
        WeightedDistributedSampler([0.0, 0.0])
    with pytest.raises(BadInput, match="rank 2 is outside world size 2"):
        WeightedDistributedSampler([1.0], rank=2, world_size=2)
    with pytest.raises(BadInput, match="expected 3 sample weights"):
        ChunkedShuffleSampler([0, 0, 1], weights=[1.0])
    with pytest.raises(BadInput, match="distinct"):
        WeightedDistributedSampler([1.0, 0.0, 1.0], num_samples=3, replacement=False)
