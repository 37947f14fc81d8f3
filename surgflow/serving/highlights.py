"""Highlight reels: a few seconds around each phase transition of a video, with the phase name
and the time drawn on every frame, from the production chain's analysis of a registered video.

:func:`reel_windows` and :func:`caption` are pure; :func:`write_reel` decodes only the frames of
the windows (in chunks) and encodes the reel with PyAV; :func:`make_highlights` is what
``surgflow highlights`` runs. The reel is the one file written; nothing else of the video is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surgflow.config import Settings
from surgflow.errors import BadInput

log = logging.getLogger(__name__)

CHUNK = 32


@dataclass(frozen=True)
class Window:
    """Frames ``[start, end)`` of the source shown around ``moments`` (key-moment dicts)."""

    start: int
    end: int
    moments: tuple[Mapping[str, Any], ...]


def reel_windows(moments: Sequence[Mapping[str, Any]], num_frames: int, fps: float, *,
                 before_s: float = 2.0, after_s: float = 3.0) -> list[Window]:
    """Windows of ``before_s`` + ``after_s`` around each transition, overlapping ones merged;
    a video without a transition gets its opening ``after_s`` seconds."""
    if num_frames <= 0:
        return []
    before, after = round(before_s * fps), max(1, round(after_s * fps))
    if not moments:
        return [Window(0, min(num_frames, after), ())]
    windows: list[Window] = []
    for m in sorted(moments, key=lambda m: m["frame"]):
        start = max(0, int(m["frame"]) - before)
        end = min(num_frames, int(m["frame"]) + after)
        if windows and start <= windows[-1].end:
            last = windows[-1]
            windows[-1] = Window(last.start, max(last.end, end), (*last.moments, m))
        else:
            windows.append(Window(start, end, (m,)))
    return windows


def clock(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


def caption(frame: int, fps: float, label: str, window: Window) -> tuple[str, str | None]:
    """The two lines drawn on ``frame``: phase and time; the nearest transition, if any."""
    top = f"{label}  {clock(frame / fps)}"
    if not window.moments:
        return top, None
    m = min(window.moments, key=lambda m: abs(int(m["frame"]) - frame))
    return top, f"-> {m['to_label']} at {clock(float(m['time_s']))}"


def _draw(img: np.ndarray, lines: tuple[str, str | None], font, progress: float) -> np.ndarray:
    from PIL import Image, ImageDraw

    h, w = img.shape[:2]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil, "RGBA")
    size = font.size if hasattr(font, "size") else 10
    band = int(size * (2.8 if lines[1] else 1.6))
    draw.rectangle([0, 0, w, band], fill=(0, 0, 0, 160))
    draw.text((4, 2), lines[0], font=font, fill=(255, 255, 255, 255))
    if lines[1]:
        draw.text((4, 2 + int(size * 1.3)), lines[1], font=font, fill=(255, 214, 90, 255))
    draw.rectangle([0, h - 3, int(w * progress), h], fill=(90, 200, 255, 220))
    return np.asarray(pil)


def _font(width: int):
    from PIL import ImageFont

    size = max(8, width // 20)
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def write_reel(video_path: Path, out: Path, *, frame_labels: np.ndarray,
               label_names: Sequence[str], windows: Sequence[Window], fps: float,
               blackout: Sequence[tuple[int, int]] = ()) -> int:
    """Encode the windows' frames with their captions as an H.264 MP4; returns frames written.

    Source frames in ``blackout`` (sorted, non-overlapping half-open ranges, as
    :attr:`~surgflow.data.proxies.ProxySpec.blackout`) are written all black, caption and
    progress bar included, and never read from the source. The reel carries no metadata (see
    :class:`~surgflow.data.proxies.H264Writer`).
    """
    import av

    from surgflow.data.proxies import H264Writer
    from surgflow.data.ranges import check, contains
    from surgflow.data.video import open_reader

    if not windows:
        raise BadInput(f"{video_path}: nothing to put in a highlight reel")
    try:
        blackout = check(blackout, "blackout range")
    except ValueError as e:
        raise BadInput(f"{video_path}: {e}") from e
    reader = open_reader(video_path)
    h, w = reader[0].shape[:2]
    reader.seek(0)
    w2, h2 = w // 2 * 2, h // 2 * 2
    font = _font(w2)
    total = len(frame_labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    with H264Writer(tmp, rate=round(fps) or 25, width=w2, height=h2, crf=23) as writer:
        for window in windows:
            for lo in range(window.start, window.end, CHUNK):
                idx = range(lo, min(window.end, lo + CHUNK))
                shown = [i for i in idx if not contains(blackout, i)]
                batch = reader.get_batch(shown).asnumpy() if shown else ()
                frames = dict(zip(shown, batch, strict=True))
                for i in idx:
                    if i not in frames:
                        writer.write_black()
                        continue
                    label = label_names[int(frame_labels[min(i, total - 1)])]
                    drawn = _draw(np.ascontiguousarray(frames[i][:h2, :w2]),
                                  caption(i, fps, label, window), font, i / max(1, total))
                    writer.write(av.VideoFrame.from_ndarray(drawn, format="rgb24"))
    tmp.replace(out)
    return writer.frames


def make_highlights(settings: Settings, video_id: str, out: Path | None = None, *,
                    before_s: float = 2.0, after_s: float = 3.0) -> dict[str, Any]:
    """The reel of a registered video from its procedure's production chain, redacted like
    every medium people see (:mod:`surgflow.data.privacy`): PrivacyHold (exit 2) for a video
    not cleared for people, and every frame within a second of an out-of-body range black;
    transitions inside such ranges are not shown."""
    from surgflow.data.privacy import clearance
    from surgflow.data.ranges import contains
    from surgflow.data.registry import VideoRegistry
    from surgflow.data.video import resolve_video_uri
    from surgflow.registry import ModelRegistry, model_name
    from surgflow.serving.pool import load_chain
    from surgflow.serving.screening import privacy_policy

    roots = settings.resolved_video_roots()
    record = VideoRegistry(settings.home, roots).get(video_id)
    path = resolve_video_uri(record.uri, roots)
    registry = ModelRegistry(settings)
    cleared = clearance(settings.home, record, privacy_policy(settings, registry)).require()
    name = model_name(record.procedure)
    version = registry.production(name)
    if version is None:
        raise BadInput(f"video {video_id!r}: procedure {record.procedure!r} has no production "
                       f"model ({name}); promote one first")
    runner = load_chain(registry, name, version)
    analysis = runner.analyze(path)
    labels = list(runner.spec.labels)
    moments = [m for m in analysis.timeline.key_moments(labels, analysis.fps)
               if not contains(cleared.blackout, m["frame"])]
    windows = reel_windows(moments, analysis.num_frames, analysis.fps, before_s=before_s,
                           after_s=after_s)
    out = Path(out or f"{video_id}-highlights.mp4")
    frames = write_reel(path, out, frame_labels=np.asarray(analysis.timeline.labels),
                        label_names=labels, windows=windows, fps=analysis.fps,
                        blackout=cleared.blackout)
    log.info("highlights of %s: %d transitions, %d frames", video_id, len(moments), frames)
    return {"video_id": video_id, "model": {"name": name, "version": version},
            "out": str(out.absolute()), "key_moments": moments, "clips": len(windows),
            "frames": frames, "seconds": round(frames / analysis.fps, 3),
            "privacy": cleared.reason}
