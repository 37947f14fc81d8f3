"""The chain runner: a chain bundle's ONNX graphs over a whole video, as production runs them.

Decoding (:class:`~surgflow.inference.decode.ClipStream`, a thread a few batches ahead) overlaps
the encoder, which sees one batch of per-second clips at a time; the temporal network then runs
once over the whole per-second feature sequence. What grows with the video's length is only the
per-second features and logits (``L×D`` floats: 7 MB for an hour at D = 512) and the per-frame
label arrays; decoded frames never outlive their batch.

Parity (:mod:`surgflow.export`), the gate and the inference service all use this one runner.
It reads the bundle with :mod:`surgflow.data.chain_bundle` and imports neither torch nor
training.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from surgflow.data.chain_bundle import ChainSpec, read_spec
from surgflow.data.clip_sampling import frame_step
from surgflow.data.video import VideoInfo, probe
from surgflow.errors import BadInput, DeadlineExceeded
from surgflow.export.sessions import make_session
from surgflow.inference.decode import ClipStream, per_second_clips
from surgflow.inference.timeline import Analysis, Timeline

Progress = Callable[[int, int], None]  # (seconds analysed, seconds in the video)

BATCH_SIZE = 16  # per-second clips per encoder call (see bench.inference)


class ChainRunner:
    """onnxruntime sessions of one chain bundle; :meth:`analyze` runs them over a video.

    A runner keeps no per-analysis state (onnxruntime's ``run`` is thread-safe), so several
    threads may analyse videos with one runner at once."""

    def __init__(self, spec: ChainSpec, encoder: Any, temporal: Any | None, *,
                 batch_size: int = BATCH_SIZE, bundle_dir: Path | None = None):
        self.spec, self.encoder, self.temporal = spec, encoder, temporal
        self.batch_size, self.bundle_dir = batch_size, bundle_dir

    @classmethod
    def load(cls, bundle_dir: Path, *, providers: Sequence[str] | None = None,
             intra_op_threads: int | None = None,
             batch_size: int = BATCH_SIZE) -> ChainRunner:
        """Sessions for the bundle in ``bundle_dir``: CUDA first where a GPU is visible (see
        :func:`surgflow.export.sessions.default_providers`), else CPU."""
        bundle_dir = Path(bundle_dir)
        spec = read_spec(bundle_dir)
        stages = [spec.encoder] + ([spec.temporal] if spec.temporal else [])
        sessions = []
        for stage in stages:
            path = bundle_dir / stage.file_onnx
            if not path.is_file():
                raise BadInput(f"chain bundle {bundle_dir}: file {stage.file_onnx} is missing")
            try:
                sessions.append(make_session(path, providers=providers,
                                             intra_op_threads=intra_op_threads))
            except Exception as e:  # onnxruntime's InvalidProtobuf, Fail, ...
                raise BadInput(f"chain bundle {bundle_dir}: {stage.file_onnx} cannot be loaded: "
                               f"{' '.join(str(e).split())[:200]}") from e
        return cls(spec, sessions[0], sessions[1] if len(sessions) > 1 else None,
                   batch_size=batch_size, bundle_dir=bundle_dir)

    @property
    def providers(self) -> list[str]:
        return list(self.encoder.get_providers())

    def warm(self) -> ChainRunner:
        """Run each graph once on zeros, so the first real request does not pay for the
        sessions' lazy initialisation (memory arenas, CUDA kernels)."""
        c = self.spec.clip
        clips = np.zeros((self.batch_size, 3, c.frames, c.size, c.size), dtype=np.uint8)
        self.encoder.run(None, {"clips": clips})
        if self.temporal is not None:
            dim = self.spec.temporal.feature_dim
            self.temporal.run(None, {"features": np.zeros((1, dim, 8), dtype=np.float32)})
        return self

    def analyze(self, path: str | Path, *, info: VideoInfo | None = None,
                deadline_s: float | None = None, on_progress: Progress | None = None) -> Analysis:
        """The chain's timeline of the whole video at ``path``.

        ``info`` skips probing when the caller has probed already. A video that cannot be
        decoded raises VideoError; one not finished within ``deadline_s`` seconds raises
        DeadlineExceeded."""
        started = time.perf_counter()
        deadline = started + deadline_s if deadline_s is not None else None
        info = info or probe(path)
        ds = per_second_clips(path, info, self.spec.clip)
        total = len(ds)
        features = logits = None
        encoder_s = wait_s = 0.0
        done = 0
        with ClipStream(ds, path, batch_size=self.batch_size) as stream:
            while True:
                t0 = time.perf_counter()
                try:
                    got = stream.next_batch(_remaining(deadline))
                except queue.Empty:
                    _expired(path, deadline_s, done, total)
                wait_s += time.perf_counter() - t0
                if got is None:
                    break
                first, clips = got
                _check(deadline, path, deadline_s, done, total)
                t0 = time.perf_counter()
                f, lg = self.encoder.run(["features", "logits"], {"clips": clips})
                encoder_s += time.perf_counter() - t0
                if features is None:  # preallocated once: per-second rows only
                    features = np.empty((total, f.shape[1]), dtype=np.float32)
                    logits = np.empty((total, lg.shape[1]), dtype=np.float32)
                features[first : first + len(f)] = f
                logits[first : first + len(lg)] = lg
                done = first + len(f)
                if on_progress is not None:
                    on_progress(done, total)
            decode_s = stream.decode_s
        assert features is not None and logits is not None  # a video has at least one second
        step = frame_step(info.fps, self.spec.sample_fps)
        encoder_tl = Timeline.from_logits(logits, info.num_frames, step)
        timeline, temporal_s = encoder_tl, 0.0
        if self.temporal is not None:
            _check(deadline, path, deadline_s, total, total)
            t0 = time.perf_counter()
            x = np.ascontiguousarray(features.T[None])
            chain = self.temporal.run(["logits"], {"features": x})[0][0].T
            temporal_s = time.perf_counter() - t0
            timeline = Timeline.from_logits(chain, info.num_frames, step)
        return Analysis(fps=info.fps, num_frames=info.num_frames, step=step, timeline=timeline,
                        encoder_timeline=encoder_tl, seconds=time.perf_counter() - started,
                        timings={"decode_s": decode_s, "decode_wait_s": wait_s,
                                 "encoder_s": encoder_s, "temporal_s": temporal_s})


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.perf_counter())


def _check(deadline: float | None, path: str | Path, deadline_s: float | None, done: int,
           total: int) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        _expired(path, deadline_s, done, total)


def _expired(path: str | Path, deadline_s: float | None, done: int, total: int) -> NoReturn:
    raise DeadlineExceeded(f"analysis of {path} did not finish within its deadline of "
                           f"{deadline_s:g} s ({done} of {total} seconds of video analysed)")
