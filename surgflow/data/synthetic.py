"""Synthetic surgical-like videos with ground-truth phase segments.

Each video follows a Cholec80-like phase sequence (the canonical order, variable phase lengths,
some phases revisited). Every phase has its own visual signature (tissue colour and texture,
the number, shape and motion of moving "instruments") so that a small model can learn phases;
every hospital has its own appearance (tint, sensor noise, resolution, fps) so that a new
hospital is a real distribution shift. Output is deterministic for a seed: the same seed gives
the same frames and segments (the encoded bytes too, with one encoder thread).

With ``out_of_body=True`` a video also holds what an out-of-body detector must learn: the scope
outside the patient at the start, at the end and now and then for lens cleaning (operating-room
scenes: ``room``, ``face``, ``board``, ``towel``), and in-body stretches that are hard to tell
apart (``smoke``, ``tissue``). Out-of-body frames belong to no phase; the ``privacy`` track
labels every frame :data:`~surgflow.data.privacy.IN_BODY` or
:data:`~surgflow.data.privacy.OUT_OF_BODY`. The range arithmetic is pure
(:mod:`surgflow.data.synthetic_scenes`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from surgflow.data.privacy import OUT_OF_BODY
from surgflow.data.synthetic_scenes import (
    OUT_OF_BODY_SCENES,
    SceneLook,
    cut,
    privacy_segments,
    scene_schedule,
)
from surgflow.data.taxonomy import CHOLEC80_PHASES
from surgflow.data.video import VideoInfo

# Typical Cholec80 phase durations in seconds (means over the public dataset, rounded).
_TYPICAL_S = (125.0, 954.0, 168.0, 857.0, 98.0, 178.0, 83.0)


@dataclass(frozen=True)
class HospitalStyle:
    """How one hospital's cameras and processing make its videos look."""

    name: str
    tint: tuple[float, float, float]
    noise_std: float
    width: int
    height: int
    fps: int
    brightness: float = 1.0


HOSPITALS: dict[str, HospitalStyle] = {
    "hospital-a": HospitalStyle("hospital-a", (1.00, 1.00, 1.00), 4.0, 224, 224, 25),
    "hospital-b": HospitalStyle("hospital-b", (1.08, 0.95, 0.90), 7.0, 256, 192, 30),
    "hospital-c": HospitalStyle("hospital-c", (0.88, 1.02, 1.12), 10.0, 160, 128, 25, 0.85),
}


class SyntheticVideo(VideoInfo):
    """A written synthetic video (its file, id and hospital, and what it holds) and its ground
    truth: phase ``segments`` (out-of-body frames belong to none), the ``privacy`` track
    covering every frame, and the ``scenes`` (out-of-body and hard in-body stretches)."""

    path: Path
    video_id: str
    hospital: str
    segments: list[dict] = Field(default_factory=list)
    #: ``{"start_frame", "end_frame", "label"}`` covering ``[0, num_frames)``, labels InBody or
    #: OutOfBody, neighbours differing
    privacy: list[dict] = Field(default_factory=list)
    #: ``{"start_frame", "end_frame", "scene"}`` for each out-of-body and hard in-body stretch
    scenes: list[dict] = Field(default_factory=list)

    @property
    def segments_path(self) -> Path:
        return segments_path(self.path)

    def out_of_body(self) -> np.ndarray:
        """Per frame, whether the ground truth has it out of the body."""
        out = np.zeros(self.num_frames, dtype=bool)
        for s in self.privacy:
            if s["label"] == OUT_OF_BODY:
                out[s["start_frame"]:s["end_frame"]] = True
        return out


def segments_path(video_path: Path) -> Path:
    return Path(video_path).with_suffix(".segments.json")


def phase_schedule(
    rng: np.random.Generator, num_frames: int, fps: float, n_labels: int = 7
) -> list[tuple[int, int, int]]:
    """Phase sequence as half-open ``(start, end, label_index)`` covering ``[0, num_frames)``.

    The canonical order with Dirichlet-varied lengths; with some probability a short revisit
    of coagulation after dissection, or of dissection after packaging, as happens in practice.
    """
    typical = np.array((_TYPICAL_S * ((n_labels + 6) // 7))[:n_labels])
    shares = rng.dirichlet(typical / typical.sum() * 40.0)
    order = list(range(n_labels))
    revisits: list[tuple[int, int]] = []  # (position to insert after, label)
    if n_labels >= 7:
        if rng.random() < 0.35:
            revisits.append((3, 5))  # coagulation during gallbladder dissection
        if rng.random() < 0.25:
            revisits.append((4, 3))  # back to dissection after packaging
    phases = [(lbl, float(shares[lbl])) for lbl in order]
    for after, lbl in sorted(revisits, reverse=True):
        share = float(shares[lbl]) * 0.3
        phases.insert(after + 1, (lbl, share))
    total = sum(s for _, s in phases)
    min_frames = max(1, round(fps))  # every phase lasts at least about a second
    if num_frames < min_frames * len(phases):
        phases = [(lbl, s) for lbl, s in phases[:n_labels]]
        min_frames = max(1, num_frames // len(phases))
    lengths = [max(min_frames, int(s / total * num_frames)) for _, s in phases]
    excess = sum(lengths) - num_frames
    i = int(np.argmax(lengths))
    lengths[i] -= excess
    out, start = [], 0
    for (lbl, _), length in zip(phases, lengths, strict=True):
        if length <= 0:
            continue
        out.append((start, start + length, lbl))
        start += length
    merged: list[tuple[int, int, int]] = []
    for s, e, lbl in out:
        if merged and merged[-1][2] == lbl:
            merged[-1] = (merged[-1][0], e, lbl)
        else:
            merged.append((s, e, lbl))
    return merged


class _PhaseLook:
    """Precomputed appearance of one phase in one video: texture and instrument layout."""

    def __init__(self, rng: np.random.Generator, label: int, n_labels: int, h: int, w: int):
        hue = label / max(n_labels, 1)
        base = np.array(
            [
                150 + 80 * np.cos(2 * np.pi * hue),
                70 + 60 * np.sin(2 * np.pi * hue),
                60 + 50 * np.cos(2 * np.pi * (hue + 0.33)),
            ]
        )
        coarse = rng.normal(0, 1, size=(h // 16 + 2, w // 16 + 2, 1))
        texture = np.kron(coarse, np.ones((16, 16, 1)))[:h, :w]
        stripes = np.sin(np.arange(w)[None, :, None] * (0.05 + 0.04 * (label % 4)))
        self.background = np.clip(base + 25 * texture + 15 * stripes, 0, 255).astype(np.float32)
        self.n_instruments = 1 + label % 3
        self.speed = 0.5 + 0.6 * ((label * 3) % 5)
        self.vertical = label % 2 == 1
        self.shade = 200.0 - 25.0 * (label % 4)
        self.thickness = max(2, (h // 20) * (1 + label % 2))


def _render(look: _PhaseLook, t: float, h: int, w: int, rng_phase: float) -> np.ndarray:
    frame = np.roll(look.background, int(3 * np.sin(0.7 * t + rng_phase)), axis=1).copy()
    for k in range(look.n_instruments):
        pos = 0.5 + 0.35 * np.sin(look.speed * t + k * 2.1 + rng_phase)
        th = look.thickness
        if look.vertical:
            x = int(pos * (w - th))
            y_end = int(h * (0.45 + 0.15 * k))
            frame[:y_end, x : x + th] = look.shade
        else:
            y = int(pos * (h - th))
            x_end = int(w * (0.55 + 0.12 * k))
            frame[y : y + th, w - x_end :] = look.shade
    return frame


def generate_video(
    path: str | Path,
    *,
    seed: int,
    duration_s: float,
    hospital: str | HospitalStyle = "hospital-a",
    fps: int | None = None,
    width: int | None = None,
    height: int | None = None,
    labels: Sequence[str] = CHOLEC80_PHASES,
    gop: int = 250,
    procedure: str = "cholecystectomy",
    out_of_body: bool = False,
) -> SyntheticVideo:
    """Write one synthetic H.264 video and its ``.segments.json`` ground truth.

    With ``out_of_body`` the video also holds the scenes of :func:`scene_schedule`; phase
    segments then leave out the out-of-body frames. Scenes are drawn from the seed's generator
    after everything else, so a seed gives the same phases and in-body pictures either way.
    """
    import av

    style = HOSPITALS[hospital] if isinstance(hospital, str) else hospital
    fps = fps or style.fps
    w = (width or style.width) // 2 * 2
    h = (height or style.height) // 2 * 2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_frames = max(1, round(duration_s * fps))
    schedule = phase_schedule(rng, num_frames, fps, len(labels))
    looks = {lbl: _PhaseLook(rng, lbl, len(labels), h, w) for lbl in {s[2] for s in schedule}}
    noise_bank = rng.normal(0, style.noise_std, size=(8, h, w, 1)).astype(np.float32)
    tint = np.array(style.tint, dtype=np.float32) * style.brightness
    phase_offset = float(rng.uniform(0, 2 * np.pi))
    scenes = scene_schedule(rng, num_frames, fps) if out_of_body else []
    scene_looks = [SceneLook(rng, kind, h, w) for _, _, kind in scenes]
    outside = [(s, e) for s, e, kind in scenes if kind in OUT_OF_BODY_SCENES]

    def phase(look: _PhaseLook) -> Callable[[float], np.ndarray]:
        return lambda t: _render(look, t, h, w, phase_offset)

    def smoky(look: _PhaseLook, haze: SceneLook) -> Callable[[float], np.ndarray]:
        share = haze.haze_share
        return lambda t: _render(look, t, h, w, phase_offset) * (1 - share) + haze.render(t) * share

    # (start, end, draw): the phase schedule split wherever a scene starts or ends
    pieces = [(s, e, phase(looks[lbl])) for s, e, lbl in cut(schedule, [r[:2] for r in scenes])]
    for (s, e, kind), look in zip(scenes, scene_looks, strict=True):
        if kind == "smoke":
            inside = cut(schedule, [(0, s), (e, num_frames)])
            pieces += [(a, b, smoky(looks[lbl], look)) for a, b, lbl in inside]
        else:
            pieces.append((s, e, look.render))

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1
        stream.options = {"preset": "ultrafast", "crf": "23", "keyint_min": str(min(gop, 25))}
        for start, end, draw in sorted(pieces, key=lambda p: p[0]):
            for i in range(start, end):
                img = draw(i / fps) + noise_bank[i % 8]
                img = np.clip(img * tint, 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    segments = [
        {"start_frame": s, "end_frame": e, "label": labels[lbl]}
        for s, e, lbl in cut(schedule, outside)
    ]
    video = SyntheticVideo(
        path=path,
        video_id=path.stem,
        hospital=style.name,
        fps=fps,
        num_frames=num_frames,
        width=w,
        height=h,
        segments=segments,
        privacy=privacy_segments(num_frames, outside),
        scenes=[{"start_frame": s, "end_frame": e, "scene": kind} for s, e, kind in scenes],
    )
    meta = video.model_dump(mode="json", exclude={"path", "duration_s"})
    meta |= {"procedure": procedure, "seed": seed}
    segments_path(path).write_text(json.dumps(meta, indent=1))
    return video


def generate_corpus(
    out_dir: str | Path,
    n_videos: int,
    *,
    seed: int,
    duration_s: float,
    hospitals: Sequence[str] = ("hospital-a", "hospital-b"),
    fps: int | None = None,
    size: tuple[int, int] | None = None,
    gop: int = 250,
    prefix: str = "case",
    out_of_body: bool = False,
) -> list[SyntheticVideo]:
    """Write ``n_videos`` videos round-robin over ``hospitals``: ``<hospital>-<prefix>-NNNN``
    (with out-of-body scenes if ``out_of_body``, see :func:`generate_video`)."""
    out = []
    for i in range(n_videos):
        hospital = hospitals[i % len(hospitals)]
        out.append(
            generate_video(
                Path(out_dir) / f"{hospital}-{prefix}-{i:04d}.mp4",
                seed=seed * 100_003 + i,
                duration_s=duration_s,
                hospital=hospital,
                fps=fps,
                width=size[0] if size else None,
                height=size[1] if size else None,
                gop=gop,
                out_of_body=out_of_body,
            )
        )
    return out


def load_segments(video_path: str | Path) -> list[dict]:
    """Ground-truth segments written beside a synthetic video."""
    return json.loads(segments_path(Path(video_path)).read_text())["segments"]


def load_privacy(video_path: str | Path) -> list[dict]:
    """The ground-truth privacy track written beside a synthetic video; a sidecar written
    before the track existed is in-body throughout."""
    meta = json.loads(segments_path(Path(video_path)).read_text())
    if "privacy" in meta:
        return meta["privacy"]
    return privacy_segments(meta["num_frames"], [])
