"""Training proxies: frame mapping, content addressing, concurrent writers, use by the loader."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import decord
import numpy as np
import pytest
import torch

from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.clips import ClipDataset, iter_video
from surgflow.data.frames import ClipVideo, FrameReader
from surgflow.data.proxies import ProxySpec, ProxyStore, scaled_size
from surgflow.data.synthetic import SyntheticVideo, generate_video
from surgflow.data.video import probe, sha256_file
from surgflow.data.views import ViewSpec, resolve_view
from tests.view_helpers import commit_corpus


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVideo:
    """20 s at 25 fps, 160x128, GOP 250 (the shape of a hospital upload)."""
    return generate_video(tmp_path_factory.mktemp("proxy") / "case-p.mp4", seed=3,
                          duration_s=20, width=160, height=128, gop=250)


def _frames(path: str, numbers: list[int], w: int, h: int) -> np.ndarray:
    vr = decord.VideoReader(path, width=w, height=h, num_threads=1)
    return vr.get_batch(numbers).asnumpy().astype(np.float32)


def test_proxy_frame_k_is_source_frame_k_times_step(tmp_path: Path, original):
    store = ProxyStore(tmp_path)
    sha = sha256_file(original.path)
    proxy = store.ensure(original.path, sha, ProxySpec(step=25, short_side=64))
    assert (proxy.width, proxy.height) == scaled_size(160, 128, 64) == (80, 64)
    assert proxy.num_frames == 20 and proxy.fps == pytest.approx(1.0)
    info = probe(proxy.path)
    assert (info.num_frames, info.width, info.height) == (20, 80, 64)
    got = _frames(proxy.path, list(range(20)), 80, 64)
    same = _frames(str(original.path), [25 * k for k in range(20)], 80, 64)
    shifted = _frames(str(original.path), [25 * k + 12 for k in range(20)], 80, 64)
    err_same = np.abs(got - same).mean(axis=(1, 2, 3))
    err_shifted = np.abs(got - shifted).mean(axis=(1, 2, 3))
    assert err_same.max() < 6
    assert np.all(err_same < err_shifted)
    # a short GOP: a key frame at least every 16 proxy frames (x264 may place them closer)
    keys = list(decord.VideoReader(proxy.path, num_threads=1).get_key_indices())
    assert keys[0] == 0 and len(keys) >= 2
    assert max(np.diff([*keys, proxy.num_frames])) <= 16


def test_proxies_are_content_addressed_written_once_and_leave_the_original(tmp_path: Path,
                                                                           original):
    store = ProxyStore(tmp_path)
    sha = sha256_file(original.path)
    spec = ProxySpec(step=25, short_side=64)
    assert store.find(sha, spec) is None
    first = store.ensure(original.path, sha, spec)
    inode = Path(first.path).stat().st_ino
    again = store.ensure(original.path, sha, spec)
    assert again == first and Path(again.path).stat().st_ino == inode
    other = store.ensure(original.path, sha, ProxySpec(step=5, short_side=64))
    assert other.path != first.path and other.num_frames == 100
    assert Path(first.path).is_relative_to(tmp_path / "proxies")
    assert sha256_file(original.path) == sha
    assert not list((tmp_path / "proxies").rglob(".tmp-*"))


def _ensure(args):
    home, path, sha = args
    return ProxyStore(Path(home)).ensure(path, sha, ProxySpec(step=5, short_side=48)).model_dump()


def test_concurrent_writers_publish_one_proxy(tmp_path: Path, original):
    sha = sha256_file(original.path)
    # spawn, not fork: by now this process has threads (and decord readers) that a fork copies
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map_async(_ensure, [(str(tmp_path), str(original.path), sha)] * 2
                                 ).get(timeout=180)
    assert results[0] == results[1]
    assert len(list((tmp_path / "proxies").rglob("*.mp4"))) == 1
    assert len(list((tmp_path / "proxies").rglob("*.json"))) == 1


def test_loader_reads_the_proxy_only_when_the_clip_spec_allows(tmp_path: Path, original):
    store = ProxyStore(tmp_path)
    sha = sha256_file(original.path)
    proxy = store.ensure(original.path, sha, ProxySpec(step=25, short_side=64))
    video = ClipVideo.of(original.path, original, "case-p", proxy)
    reader = FrameReader()
    one_fps = np.array([0, 25, 50, 75])
    assert reader.source_for(video, one_fps, 64)[0] == proxy.path
    assert reader.source_for(video, one_fps, 64)[1].tolist() == [0, 1, 2, 3]
    assert reader.source_for(video, one_fps, 32)[0] == proxy.path  # smaller is fine
    assert reader.source_for(video, one_fps, 96)[0] == str(original.path)  # no upscaling
    assert reader.source_for(video, np.array([0, 5, 10]), 64)[0] == str(original.path)

    spec = ClipSpec(frames=4, stride=1, fps=1, size=64)
    with_proxy = ClipDataset([video], [0], [25], [0], spec)
    without = ClipDataset([ClipVideo.of(original.path, original, "case-p")], [0], [25], [0],
                          spec)
    a, b = with_proxy[0], without[0]
    assert (a["start_frame"], a["end_frame"]) == (25, 101)
    assert a["clip"].shape == b["clip"].shape == (3, 4, 64, 64)
    assert (a["clip"] - b["clip"]).abs().mean() < 0.1  # same frames, re-encoded once

    per_second = list(iter_video(video, fps=1, size=64, batch_frames=8))
    assert np.concatenate([n for n, _ in per_second]).tolist() == list(range(0, 500, 25))
    plain = list(iter_video(without.videos[0], fps=1, size=64, batch_frames=8))
    a, b = torch.cat([x for _, x in per_second]), torch.cat([x for _, x in plain])
    assert a.shape == b.shape == (20, 3, 64, 64)
    assert (a - b).abs().mean() < 0.1 < (a[1:] - b[:-1]).abs().mean()


def test_view_dataset_makes_missing_proxies_once(surgflow_home: Path, synthetic_corpus):
    commit_corpus(surgflow_home, synthetic_corpus)
    view = resolve_view(ViewSpec(sources=["cholecystectomy"],
                                 clip=ClipSpec(frames=2, stride=1, fps=1, size=64)), surgflow_home)
    store = ProxyStore(surgflow_home)
    found = ClipDataset.from_view(view, proxies=store)
    assert all(v.proxy is None for v in found.videos)
    made = ClipDataset.from_view(view, proxies=store, make_proxies=True)
    assert all(v.proxy is not None for v in made.videos)
    assert [v.proxy.spec.step for v in made.videos] == [round(v.fps) for v in view.videos]
    again = ClipDataset.from_view(view, proxies=store)
    assert [v.proxy for v in again.videos] == [v.proxy for v in made.videos]
    item = made[len(made) - 1]
    assert item["clip"].shape == (3, 2, 64, 64)


@pytest.mark.parametrize("short_side", [16, 24, 48, 72])
def test_proxies_avoid_widths_decord_cannot_read(tmp_path: Path, short_side: int) -> None:
    src = generate_video(tmp_path / "square.mp4", seed=1, duration_s=2, fps=10, width=96,
                         height=96)
    spec = ProxySpec(step=2, short_side=short_side, gop=8)
    proxy = ProxyStore(tmp_path / "home").ensure(src.path, sha256_file(src.path), spec)
    assert proxy.height == short_side and proxy.width >= short_side
    frames = decord.VideoReader(proxy.path, num_threads=1).get_batch([0, 1, 2]).asnumpy()
    assert frames.shape == (3, proxy.height, proxy.width, 3)
    clip = ClipSpec(frames=1, stride=1, fps=5.0, size=short_side)
    video = ClipVideo.of(src.path, src, proxy=proxy)
    reader = FrameReader()
    assert reader.source_for(video, np.array([4]), clip.size)[0] == proxy.path
    assert reader.frames(video, [4], clip.size).shape == (1, short_side, short_side, 3)
