"""The clip dataset over real decoded videos: DataLoader workers, samplers, failures, memory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import av
import decord
import numpy as np
import psutil
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.clips import MEAN, STD, ClipDataset, iter_video, normalise
from surgflow.data.frames import _INHERITED, ClipVideo
from surgflow.data.samplers import WeightedDistributedSampler
from surgflow.data.synthetic import SyntheticVideo, generate_video
from surgflow.data.views import ViewSpec, resolve_view
from surgflow.errors import DecodeError
from tests.view_helpers import commit_corpus

CLIP = ClipSpec(frames=8, stride=2, size=64)


@pytest.fixture
def view(surgflow_home: Path, synthetic_corpus: list[SyntheticVideo]):
    commit_corpus(surgflow_home, synthetic_corpus)
    return resolve_view(ViewSpec(sources=["cholecystectomy"], clip=CLIP, min_confidence=0.0,
                                 balance="inverse_frequency", seed=3), surgflow_home)


def _reference_clip(path: str, width: int, height: int, frames: list[int], size: int):
    """Independent decode: scale the short side to ``size``, centre crop, normalise."""
    scale = size / min(width, height)
    w, h = round(width * scale), round(height * scale)
    vr = decord.VideoReader(path, width=w, height=h, num_threads=1)
    x = vr.get_batch(frames).asnumpy()
    top, left = (h - size) // 2, (w - size) // 2
    x = x[:, top : top + size, left : left + size].astype(np.float32) / 255
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(x).permute(3, 0, 1, 2)


def test_dataloader_with_two_workers_delivers_every_clip_correctly(view):
    ds = ClipDataset.from_view(view)
    loader = DataLoader(ds, batch_size=4, num_workers=2,
                        sampler=view.sampler(batch_size=4, num_workers=2, chunk_size=8))
    weighted = view.sampler(batch_size=4, num_workers=2, chunk_size=8)
    seen = []
    for batch in loader:
        assert batch["clip"].shape[1:] == (3, 8, 64, 64) and batch["clip"].dtype == torch.float32
        for j, i in enumerate(batch["index"].tolist()):
            assert batch["label"][j] == view.label[i]
            assert batch["video_id"][j] == view.videos[view.video[i]].video_id
            assert batch["start_frame"][j] == view.start[i]
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == sorted(weighted.indices().tolist())
    # a few clips, one per video, against an independent decode
    for vi, v in enumerate(view.videos):
        i = int(np.flatnonzero(view.video == vi)[-1])
        frames = (view.start[i] + np.arange(8) * 2).tolist()
        item = ds[i]
        assert item["end_frame"] == frames[-1] + 1
        assert torch.allclose(item["clip"], _reference_clip(v.path, v.width, v.height, frames, 64),
                              atol=1e-5)


def test_uint8_clips_normalised_later_equal_float_clips(view):
    floats = ClipDataset.from_view(view)
    raw = ClipDataset.from_view(view, dtype=torch.uint8)
    for i in (0, len(raw) - 1):
        x = raw[i]["clip"]
        assert x.dtype == torch.uint8 and x.shape == (3, 8, 64, 64)
        assert torch.allclose(normalise(x), floats[i]["clip"], atol=1e-5)
    batch = torch.stack([raw[0]["clip"], raw[1]["clip"]])
    assert torch.allclose(normalise(batch)[1], floats[1]["clip"], atol=1e-5)
    frames = ClipDataset(raw.videos, [0], [10], [0], ClipSpec(frames=1, size=64),
                         frame_level=True, dtype=torch.uint8)[0]["clip"]
    assert frames.shape == (3, 64, 64)
    float_frames = ClipDataset(raw.videos, [0], [10], [0], ClipSpec(frames=1, size=64),
                               frame_level=True)[0]["clip"]
    assert torch.allclose(normalise(frames, channel_dim=-3), float_frames, atol=1e-5)


class _WhichReader(Dataset):
    """Clip items plus what the worker's frame reader holds after decoding them."""

    def __init__(self, clips: ClipDataset):
        self.clips = clips

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        item = self.clips[i]
        readers = self.clips.reader._readers
        return {"index": item["index"], "own_readers": self.clips.reader._pid == os.getpid(),
                "inherited_parked": len(_INHERITED) > 0, "open": len(readers)}


@pytest.mark.timeout(120)
def test_reader_opened_before_the_fork_is_not_used_by_workers(view):
    ds = ClipDataset.from_view(view)
    first = ds[0]["clip"]  # opens a reader in this process before the workers fork
    assert len(ds.reader._readers) == 1
    loader = DataLoader(_WhichReader(ds), batch_size=2, num_workers=2, sampler=DistributedSampler(
        ds, num_replicas=2, rank=1, shuffle=True, seed=0))
    batches = list(loader)
    for b in batches:  # every worker opened its own reader and parked the inherited one
        assert b["own_readers"].all() and b["inherited_parked"].all()
        assert (b["open"] == 1).all()  # one open reader per worker
    rank1 = [i for b in batches for i in b["index"].tolist()]
    rank0 = list(DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=0))
    assert sorted(rank0 + rank1) == list(range(len(ds))) + ([] if len(ds) % 2 == 0 else [rank0[0]])
    assert torch.equal(ds[0]["clip"], first)


def test_weighted_distributed_sampler_in_a_dataloader(view):
    ds = ClipDataset.from_view(view)
    sampler = WeightedDistributedSampler(view.weights, num_samples=12, seed=1, rank=0,
                                         world_size=2)
    got = [i for b in DataLoader(ds, batch_size=3, sampler=sampler, num_workers=2)
           for i in b["index"].tolist()]
    assert got == sampler.indices().tolist() and len(got) == 6


def test_frame_level_mode_and_whole_video_iteration(view):
    ds = ClipDataset(ClipDataset.from_view(view).videos, [0, 0], [0, 25], [1, 2],
                     ClipSpec(frames=1, size=40), frame_level=True)
    item = ds[1]
    assert item["clip"].shape == (3, 40, 40) and item["label"] == 2
    assert (item["start_frame"], item["end_frame"]) == (25, 26)

    v = ds.videos[0]
    batches = list(iter_video(v, fps=1, size=40, batch_frames=5))
    numbers = np.concatenate([n for n, _ in batches])
    step = round(v.fps)
    assert numbers.tolist() == list(range(0, v.num_frames, step))
    assert all(x.shape == (len(n), 3, 40, 40) for n, x in batches)
    ref = _reference_clip(v.path, v.width, v.height, [int(numbers[7])], 40)[:, 0]
    assert torch.allclose(batches[1][1][2], ref, atol=1e-5)


def test_sizes_decord_cannot_scale_to_are_scaled_by_torch(view):
    # decord writes a wrongly sized frame when asked for 48 px (and 16, 24, 72 ...)
    v = ClipDataset.from_view(view).videos[0]
    ds = ClipDataset([v], [0], [30], [0], ClipSpec(frames=2, size=48))
    clip = ds[0]["clip"]
    assert clip.shape == (3, 2, 48, 48)
    with av.open(v.path) as c:
        frames = [f for i, f in zip(range(32), c.decode(video=0), strict=False) if i in (30, 31)]
    ref = np.stack([f.reformat(width=48, height=48, format="rgb24").to_ndarray()
                    for f in frames]).astype(np.float32) / 255
    ref = (ref - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    diff = (clip - torch.from_numpy(ref).permute(3, 0, 1, 2)).abs().mean()
    assert diff < 0.15


def _corrupt(src: Path, dest: Path) -> None:
    """A copy with bytes 50%..80% of the file zeroed: the frames stored there cannot decode."""
    shutil.copy(src, dest)
    size = dest.stat().st_size
    with open(dest, "r+b") as f:
        f.seek(size // 2)
        f.write(bytes(size * 3 // 10))


def test_decode_failure_is_retried_then_names_the_video_and_frame(tmp_path: Path):
    src = generate_video(tmp_path / "src.mp4", seed=1, duration_s=8, width=64, height=64, gop=25)
    bad = tmp_path / "case-broken.mp4"
    _corrupt(src.path, bad)
    video = ClipVideo.of(bad, src, "case-broken")
    spec = ClipSpec(frames=4, stride=10, size=32)
    ds = ClipDataset([video], [0, 0], [0, 90], [0, 0], spec)
    assert ds[0]["clip"].shape == (3, 4, 32, 32)  # the intact part still decodes
    with pytest.raises(DecodeError) as e:
        ds[1]
    msg = str(e.value)
    assert "'case-broken'" in msg and str(bad) in msg and "after 3 attempts" in msg
    assert "clip frames 90..120" in msg
    named = int(msg.split("cannot decode frame ")[1].split()[0])
    assert named in (90, 100, 110, 120)  # which one fails first depends on error concealment
    with pytest.raises(Exception, match="case-broken"):  # also through a worker process
        list(DataLoader(ds, batch_size=2, num_workers=1))


def test_decode_failure_names_the_first_frame_missing_from_a_shortened_file(tmp_path: Path):
    src = generate_video(tmp_path / "short.mp4", seed=2, duration_s=8, width=64, height=64)
    assert src.num_frames == 200
    # the file was replaced by a shorter one after it was registered with 300 frames
    video = ClipVideo(video_id="case-short", path=str(src.path), fps=25.0, num_frames=300,
                      width=64, height=64)
    ds = ClipDataset([video], [0], [180], [0], ClipSpec(frames=4, stride=10, size=32))
    with pytest.raises(DecodeError, match=r"'case-short' .* cannot decode frame 200 of clip "
                                          r"frames 180\.\.210 after 3 attempts"):
        ds[0]


def _rss() -> int:
    return psutil.Process().memory_info().rss


# ~15 s, most of it making the hour of video; the default suite reads clips of short videos
# through the same reader
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_hour_video_loads_with_memory_bounded_by_the_clip(tmp_path: Path):
    hour = generate_video(tmp_path / "hour.mp4", seed=5, duration_s=3600, width=64, height=64,
                          fps=25)
    assert hour.num_frames == 90_000
    video = ClipVideo.of(hour.path, hour, "hour")
    spec = ClipSpec(frames=16, size=64)
    starts = np.linspace(0, hour.num_frames - 16, 120).astype(np.int64)
    ds = ClipDataset([video], np.zeros(len(starts)), starts, np.zeros(len(starts)), spec)
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    next(iter(loader))  # warm up the reader and the allocator
    before, peak, count = _rss(), 0, 0
    for batch in loader:
        count += len(batch["index"])
        peak = max(peak, _rss())
    whole_video = hour.num_frames * 64 * 64 * 3
    assert count == len(starts)
    growth = peak - before
    assert growth < 64 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB reading a 1 h video"
    assert growth < whole_video / 10
