"""The chain runner over real decoded videos: timelines that cover every frame, the same
per-second predictions as the torch chain on training's clips, bounded decode-ahead, and
errors for videos that cannot be decoded or analyses past their deadline."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from surgflow.data.clip_sampling import ClipSpec, frame_step
from surgflow.data.clips import ClipDataset
from surgflow.data.frames import ClipVideo
from surgflow.data.seconds import second_clips
from surgflow.data.synthetic import generate_video
from surgflow.data.video import probe
from surgflow.errors import BadInput, DeadlineExceeded, VideoError
from surgflow.inference import ChainRunner, Timeline
from surgflow.inference.decode import ClipStream, per_second_clips
from surgflow.training.data import collate
from surgflow.training.stage_files import load_torch_chain
from tests.fixtures.models import TrainedBundle


@pytest.fixture(scope="module")
def chain_runner(tiny_chain_bundle: TrainedBundle) -> ChainRunner:
    return ChainRunner.load(tiny_chain_bundle.bundle_dir, providers=["CPUExecutionProvider"],
                            batch_size=5).warm()


@pytest.fixture(scope="module")
def odd_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A video unlike the training ones: 25 fps, 7.3 s (frames not a multiple of 25), 96×72."""
    path = tmp_path_factory.mktemp("odd") / "odd-case.mp4"
    generate_video(path, seed=11, duration_s=7.3, fps=25, width=96, height=72, gop=25)
    return path


def _check_timeline(tl: Timeline, num_frames: int, fps: float, names: list[str]) -> None:
    assert tl.labels.shape == tl.confidence.shape == (num_frames,)
    assert tl.confidence.dtype == np.float32 and ((tl.confidence > 0) & (tl.confidence <= 1)).all()
    segments = tl.segments(names)
    assert segments[0]["start_frame"] == 0 and segments[-1]["end_frame"] == num_frames
    for a, b in itertools.pairwise(segments):
        assert a["end_frame"] == b["start_frame"] and a["label"] != b["label"]
    for s in segments:
        assert all(names[k] == s["label"] for k in tl.labels[s["start_frame"]:s["end_frame"]])
        mean = tl.confidence[s["start_frame"]:s["end_frame"]].mean()
        assert s["confidence"] == pytest.approx(float(mean), abs=1e-5)
    moments = tl.key_moments(names, fps)
    assert [m["frame"] for m in moments] == [s["start_frame"] for s in segments[1:]]
    assert len(moments) == len(segments) - 1
    for m, before, after in zip(moments, segments, segments[1:], strict=False):
        assert (m["from_label"], m["to_label"]) == (before["label"], after["label"])
        assert m["time_s"] == pytest.approx(m["frame"] / fps, abs=1e-3)


def _torch_chain(bundle_dir: Path, video, clip: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-second argmax of the torch encoder head and of the torch chain on training's
    per-second clips (normalised floats, as training feeds them)."""
    encoder, temporal, _ = load_torch_chain(bundle_dir)
    ds = ClipDataset.of(second_clips(video, clip))
    x, _ = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        features = encoder.features(x)
        enc = encoder.head(features).argmax(1).numpy()
        chain = enc if temporal is None else temporal(features.T[None])[-1][0].argmax(0).numpy()
    return enc, chain


def test_timeline_covers_every_frame_of_a_labelled_video(chain_runner, tiny_chain_bundle):
    video = tiny_chain_bundle.val_videos[0]
    info = probe(video)
    progress: list[tuple[int, int]] = []
    a = chain_runner.analyze(video, on_progress=lambda done, total: progress.append((done, total)))
    assert (a.fps, a.num_frames, a.step) == (info.fps, info.num_frames, 10)
    names = chain_runner.spec.labels
    _check_timeline(a.timeline, a.num_frames, a.fps, names)
    _check_timeline(a.encoder_timeline, a.num_frames, a.fps, names)
    assert len(a.timeline.segments(names)) >= 3  # a trained chain sees the phases change
    assert progress == [(5, 12), (10, 12), (12, 12)]  # batches of 5 per-second clips
    assert a.seconds > 0 and a.timings["encoder_s"] > 0 and a.timings["temporal_s"] > 0


def test_per_second_labels_equal_the_torch_chain_on_training_clips(chain_runner,
                                                                    tiny_chain_bundle):
    for path in tiny_chain_bundle.val_videos:
        info = probe(path)
        a = chain_runner.analyze(path, info=info)
        enc, chain = _torch_chain(tiny_chain_bundle.bundle_dir, ClipVideo.of(path, info),
                                  chain_runner.spec.clip)
        assert np.array_equal(a.second_labels, chain)
        assert np.array_equal(a.encoder_timeline.labels[:: a.step], enc)
        # each second's label covers that second's frames
        assert np.array_equal(a.timeline.labels, np.repeat(chain, a.step)[: a.num_frames])


def test_labels_map_back_onto_a_video_of_another_rate_and_size(chain_runner,
                                                               tiny_chain_bundle, odd_video):
    info = probe(odd_video)
    a = chain_runner.analyze(odd_video)
    assert a.num_frames == info.num_frames and a.step == 25 and info.num_frames % 25 != 0
    _check_timeline(a.timeline, a.num_frames, a.fps, chain_runner.spec.labels)
    _, chain = _torch_chain(tiny_chain_bundle.bundle_dir, ClipVideo.of(odd_video, info),
                            chain_runner.spec.clip)
    assert len(chain) == -(-info.num_frames // 25)
    assert np.array_equal(a.second_labels, chain)


def test_encoder_only_chain_timeline_is_the_encoder_head(tiny_encoder_bundle, odd_video):
    runner = ChainRunner.load(tiny_encoder_bundle.bundle_dir, providers=["CPUExecutionProvider"])
    assert runner.temporal is None
    info = probe(odd_video)
    a = runner.analyze(odd_video)
    assert np.array_equal(a.timeline.labels, a.encoder_timeline.labels)
    enc, _ = _torch_chain(tiny_encoder_bundle.bundle_dir, ClipVideo.of(odd_video, info),
                          runner.spec.clip)
    assert np.array_equal(a.second_labels, enc)
    _check_timeline(a.timeline, info.num_frames, info.fps, runner.spec.labels)


def test_batches_are_training_clips_with_shared_frames_decoded_once(odd_video):
    # 8 frames at 5 fps span 29 source frames at 25 fps: consecutive seconds' clips overlap
    clip = ClipSpec(frames=8, stride=1, fps=5, size=48)
    info = probe(odd_video)
    ds = per_second_clips(odd_video, info, clip)
    want = np.stack([ds.read(i).transpose(3, 0, 1, 2) for i in range(len(ds))])
    assert want.dtype == np.uint8 and want.shape == (8, 3, 8, 48, 48)
    got = np.concatenate([ds.batch(k, min(k + 3, len(ds))) for k in range(0, len(ds), 3)])
    assert np.array_equal(got, want)


def test_decoding_runs_a_bounded_number_of_batches_ahead(tiny_chain_bundle):
    path = tiny_chain_bundle.val_videos[0]
    ds = per_second_clips(path, probe(path), ClipSpec(frames=1, fps=2, size=32))
    decoded: list[int] = []
    real = ds.reader.frames

    def counting(*args, **kwargs):
        decoded.append(threading.get_ident())
        return real(*args, **kwargs)

    ds.reader.frames = counting  # type: ignore[method-assign]
    with ClipStream(ds, path, batch_size=1, prefetch=2) as stream:
        assert stream.next_batch(timeout=10) is not None
        time.sleep(0.5)  # a slow consumer: the thread fills the queue, then waits
        assert len(decoded) <= 1 + 2 + 1  # taken, queued, one waiting to be queued
        assert set(decoded) != {threading.get_ident()}  # decoded in the thread
        rest = []
        while (item := stream.next_batch(timeout=10)) is not None:
            rest.append(item[0])
    assert rest == list(range(1, 12)) and len(decoded) == 12


def test_a_deadline_that_passes_raises_deadline_exceeded(chain_runner, tiny_chain_bundle):
    with pytest.raises(DeadlineExceeded, match="deadline of 0 s") as e:
        chain_runner.analyze(tiny_chain_bundle.val_videos[0], deadline_s=0)
    assert isinstance(e.value, BadInput)
    # the runner stays usable
    assert chain_runner.analyze(tiny_chain_bundle.val_videos[0]).num_frames == 120


def test_truncated_and_garbage_files_raise_video_error(chain_runner, tiny_chain_bundle,
                                                       tmp_path):
    good = tiny_chain_bundle.val_videos[0]
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(50_000))
    for path in (truncated, garbage, tmp_path / "missing.mp4"):
        with pytest.raises(VideoError) as e:
            chain_runner.analyze(path)
        assert str(path) in str(e.value)
    # a probe the caller trusted does not make an undecodable file decodable
    info = probe(good)
    with pytest.raises(VideoError, match="cannot be decoded"):
        chain_runner.analyze(garbage, info=info)


def test_a_video_shorter_than_one_clip_is_a_video_error(tiny_encoder_bundle, tmp_path):
    runner = ChainRunner.load(tiny_encoder_bundle.bundle_dir, providers=["CPUExecutionProvider"])
    short = tmp_path / "short.mp4"
    generate_video(short, seed=1, duration_s=0.4, fps=10, width=64, height=64)
    with pytest.raises(VideoError, match="fewer than one clip"):  # 4 frames, clip spans 7
        runner.analyze(short)


def test_a_bundle_missing_its_temporal_graph_is_refused(tiny_chain_bundle, tmp_path):
    import shutil

    bundle = Path(shutil.copytree(tiny_chain_bundle.bundle_dir, tmp_path / "b"))
    (bundle / "temporal.onnx").unlink()
    with pytest.raises(BadInput, match=r"temporal\.onnx is missing"):
        ChainRunner.load(bundle)


def test_timeline_from_per_second_predictions():
    labels = np.array([2, 2, 5, 5, 5, 1, 1])
    conf = np.array([0.5, 0.7, 0.9, 0.8, 0.7, 0.6, 0.4], dtype=np.float32)
    tl = Timeline.from_seconds(labels, conf, num_frames=19, step=3)  # last second: 1 frame
    assert tl.labels.tolist() == [2] * 6 + [5] * 9 + [1] * 4
    names = [f"p{i}" for i in range(6)]
    assert tl.segments(names) == [
        {"start_frame": 0, "end_frame": 6, "label": "p2", "confidence": pytest.approx(0.6)},
        {"start_frame": 6, "end_frame": 15, "label": "p5", "confidence": pytest.approx(0.8)},
        {"start_frame": 15, "end_frame": 19, "label": "p1",
         "confidence": pytest.approx((0.6 * 3 + 0.4) / 4)},
    ]
    assert tl.key_moments(names, fps=3.0) == [
        {"frame": 6, "time_s": 2.0, "from_label": "p2", "to_label": "p5"},
        {"frame": 15, "time_s": 5.0, "from_label": "p5", "to_label": "p1"},
    ]
    one = Timeline.from_seconds(np.array([4]), np.array([0.9]), num_frames=2, step=25)
    assert one.segments(names) == [{"start_frame": 0, "end_frame": 2, "label": "p4",
                                    "confidence": pytest.approx(0.9)}]
    assert one.key_moments(names, 25.0) == []
    with pytest.raises(ValueError, match="need 7 per-second values"):
        Timeline.from_seconds(labels[:6], conf[:6], num_frames=19, step=3)
    assert frame_step(25.0, 1.0) == 25
