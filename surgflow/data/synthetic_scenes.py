"""Out-of-body and hard in-body scenes of the synthetic videos (:mod:`surgflow.data.synthetic`).

The scope outside the patient films the operating room (``room``, ``face``, ``board``, and the
hard ``towel``); inside, ``smoke`` and a lens against ``tissue`` are easily mistaken for it.
:func:`scene_schedule` places them (pure range arithmetic, with :func:`cut` and
:func:`privacy_segments`); :class:`SceneLook` draws one stretch, precomputed once, each frame a
drifting window of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from surgflow.data.privacy import IN_BODY, OUT_OF_BODY
from surgflow.data.ranges import merge

#: what the scope films outside the patient
OUT_OF_BODY_SCENES = ("room", "face", "board", "towel")
#: in-body stretches an out-of-body detector easily mistakes (they keep their phase)
HARD_IN_BODY_SCENES = ("smoke", "tissue")

_Label = TypeVar("_Label")


def cut(
    segments: Sequence[tuple[int, int, _Label]], ranges: Sequence[tuple[int, int]]
) -> list[tuple[int, int, _Label]]:
    """``segments`` (half-open ``(start, end, label)``) with the frames of ``ranges`` removed.

    A segment that a range cuts becomes shorter or splits in two; empty pieces are dropped and
    pieces keep their order (neighbours with the same label are not joined).
    """
    holes = merge(ranges)
    out: list[tuple[int, int, _Label]] = []
    for start, end, label in segments:
        pos = start
        for a, b in holes:
            if b <= pos:
                continue
            if a >= end:
                break
            if a > pos:
                out.append((pos, a, label))
            pos = b
        if pos < end:
            out.append((pos, end, label))
    return out


def privacy_segments(num_frames: int, out_of_body: Sequence[tuple[int, int]]) -> list[dict]:
    """The privacy track: InBody / OutOfBody segments covering ``[0, num_frames)``, neighbours
    differing."""
    out, pos = [], 0
    for s, e in merge((max(0, s), min(num_frames, e)) for s, e in out_of_body):
        if s > pos:
            out.append({"start_frame": pos, "end_frame": s, "label": IN_BODY})
        out.append({"start_frame": s, "end_frame": e, "label": OUT_OF_BODY})
        pos = e
    if pos < num_frames:
        out.append({"start_frame": pos, "end_frame": num_frames, "label": IN_BODY})
    return out


def out_of_body_schedule(
    rng: np.random.Generator, num_frames: int, fps: float
) -> list[tuple[int, int]]:
    """Half-open out-of-body ranges, sorted, each apart from the next by in-body frames.

    The video opens outside (3–6 % of it, at least 2 s) and closes outside (the same); a video
    of at least 12 s has 0–2 lens cleanings (1.5–4 % each, at least 1.5 s), none in its first or
    last 10 %. At least half of every video stays in-body: the opening and closing are clamped
    to a quarter each and a cleaning that would pass the half is left out, so a video of under
    four frames is in-body throughout.
    """
    n = num_frames
    quarter = n // 4
    if quarter == 0:
        return []

    def length(lo: float, hi: float, min_s: float) -> int:
        return max(round(min_s * fps), round(float(rng.uniform(lo, hi)) * n))

    opening = max(1, min(quarter, length(0.03, 0.06, 2.0)))
    closing = max(1, min(quarter, length(0.03, 0.06, 2.0)))
    ranges = [(0, opening)]
    gap = max(1, round(fps))  # a second in-body between ranges, so each stays its own
    if n >= 12 * fps:
        count = int(rng.integers(0, 3))
        lo = max(-(-n // 10), opening + gap)  # ceil, so none starts in the first 10 %
        hi = min(9 * n // 10, n - closing - gap)
        budget = n // 2 - opening - closing
        for k in range(count):
            size = length(0.015, 0.04, 1.5)
            # each cleaning gets its own slot of the middle, so cleanings never overlap
            first = lo + (hi - lo) * k // count
            last = lo + (hi - lo) * (k + 1) // count - size - gap
            if last < first or size > budget:
                continue
            start = int(rng.integers(first, last + 1))
            ranges.append((start, start + size))
            budget -= size
    ranges.append((n - closing, n))
    return ranges


def hard_scene_schedule(
    rng: np.random.Generator, num_frames: int, fps: float, out_of_body: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """1–3 short (1–3 s, at most a tenth of the video) disjoint in-body ranges, sorted, placed
    uniformly among the frames outside ``out_of_body``."""
    free = cut([(0, num_frames, None)], out_of_body)
    out: list[tuple[int, int]] = []
    for _ in range(int(rng.integers(1, 4))):
        size = max(1, min(round(float(rng.uniform(1.0, 3.0)) * fps), num_frames // 10))
        starts = [(s, e - size + 1) for s, e, _ in free if e - s >= size]
        room = sum(b - a for a, b in starts)
        if room == 0:
            continue
        k = int(rng.integers(room))
        for a, b in starts:
            if k < b - a:
                out.append((a + k, a + k + size))
                free = cut(free, [out[-1]])
                break
            k -= b - a
    return sorted(out)


def scene_schedule(
    rng: np.random.Generator, num_frames: int, fps: float
) -> list[tuple[int, int, str]]:
    """Every out-of-body and hard in-body stretch as sorted, disjoint ``(start, end, scene)``.

    Each out-of-body range shows one of :data:`OUT_OF_BODY_SCENES`; the opening and the closing
    show two in sequence half the time. Hard in-body stretches (:func:`hard_scene_schedule`)
    show one of :data:`HARD_IN_BODY_SCENES`.
    """
    oob = out_of_body_schedule(rng, num_frames, fps)
    hard = hard_scene_schedule(rng, num_frames, fps, oob)
    scenes: list[tuple[int, int, str]] = []
    for s, e in oob:
        if (s == 0 or e == num_frames) and e - s >= 2 and rng.random() < 0.5:
            first, second = rng.choice(len(OUT_OF_BODY_SCENES), size=2, replace=False)
            mid = s + int(rng.integers(max(1, (e - s) // 3), max(2, 2 * (e - s) // 3)))
            scenes += [(s, mid, OUT_OF_BODY_SCENES[first]), (mid, e, OUT_OF_BODY_SCENES[second])]
        else:
            scenes.append((s, e, OUT_OF_BODY_SCENES[int(rng.integers(len(OUT_OF_BODY_SCENES)))]))
    for s, e in hard:
        scenes.append((s, e, HARD_IN_BODY_SCENES[int(rng.integers(len(HARD_IN_BODY_SCENES)))]))
    return sorted(scenes)


def _blotches(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise (about N(0, 1)) with features about ``cell`` pixels across, ``(h, w, 1)``."""
    coarse = rng.normal(0, 1, size=(h // cell + 2, w // cell + 2))
    ys, xs = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy)[:, :, None]


def _room(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y = np.arange(h)[:, None, None] / h
    wall = np.array([203.0, 211.0, 222.0]) * (1.0 - 0.15 * y)  # lit from the ceiling
    img = np.broadcast_to(wall, (h, w, 3)).copy()
    img[int(h * rng.uniform(0.62, 0.75)) :] = (172.0, 176.0, 181.0)  # floor
    for _ in range(int(rng.integers(2, 4))):  # ceiling lamps
        x, lw = int(rng.uniform(0, 0.85) * w), int(rng.uniform(0.08, 0.2) * w)
        img[int(h * rng.uniform(0.02, 0.12)) : int(h * rng.uniform(0.16, 0.24)), x : x + lw] = 250.0
    for _ in range(int(rng.integers(1, 3))):  # cabinets and stands
        x, top = int(rng.uniform(0, 0.8) * w), int(rng.uniform(0.35, 0.55) * h)
        ch, cw = int(rng.uniform(0.15, 0.35) * h), int(rng.uniform(0.06, 0.16) * w)
        img[top : top + ch, x : x + cw] = float(rng.uniform(150, 185))
    return img + 5.0 * _blotches(rng, h, w, 12)


def _board(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = np.full((h, w, 3), (238.0, 240.0, 236.0)) + 3.0 * _blotches(rng, h, w, 24)
    row = max(3, h // 12)
    stroke = max(1, row // 4)
    step = max(2, row // 2)
    for y in range(row, h - row, int(1.7 * row)):
        ink = np.array(((30, 40, 95), (25, 25, 30), (140, 30, 35), (30, 95, 50)))[rng.integers(4)]
        x, end = int(rng.uniform(0.03, 0.12) * w), int(rng.uniform(0.55, 0.95) * w)
        while x < end:  # words of letter-like vertical strokes on a baseline
            for _ in range(int(rng.integers(2, 8))):
                top = y + row - max(stroke, int(row * rng.uniform(0.45, 1.0)))
                img[top : y + row, x : x + stroke] = ink
                x += step
            img[y + row - stroke : y + row, x - step * 2 : x - step] = ink
            x += 2 * step
    return img


def _towel(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    folds = np.zeros((h, w))
    for _ in range(3):
        angle, wave = rng.uniform(0, np.pi), rng.uniform(0.25, 0.6) * max(h, w)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        # cloth rounds between folds and creases sharply at them: sqrt|sin| has both
        crease = np.sqrt(np.abs(np.sin(np.pi * along / wave + rng.uniform(0, 6))))
        folds += rng.uniform(6, 10) * (crease - 0.75)
    weave = 1.5 * (((xx + yy) % 2) * 2 - 1)
    grey = 238.0 + folds + weave + 2.0 * _blotches(rng, h, w, 8)[:, :, 0]
    return grey[:, :, None] * np.array([1.0, 1.0, 0.98])


def _haze(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), (200.0, 200.0, 204.0)) + 12.0 * _blotches(rng, h, w, 20)


def _tissue(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    edge = ((yy / h - 0.5) ** 2 + (xx / w - 0.5) ** 2)[:, :, None]  # darker where lit least
    colour = np.array([196.0, 104.0, 112.0]) * (1.0 - 0.25 * edge)
    return colour + 6.0 * _blotches(rng, h, w, max(h, w) // 3)


# scene -> (base image, how far it drifts as shares of the frame (y, x), how fast in rad/s)
_SCENES: dict[str, tuple[Callable[..., np.ndarray], tuple[float, float], float]] = {
    "room": (_room, (0.03, 0.25), 0.25),
    "face": (_room, (0.02, 0.04), 0.3),  # a face in front of the room
    "board": (_board, (0.02, 0.02), 0.8),
    "towel": (_towel, (0.03, 0.03), 0.4),
    "smoke": (_haze, (0.05, 0.1), 0.5),
    "tissue": (_tissue, (0.03, 0.03), 0.5),
}


class _FaceSprite:
    """A face-like patch: skin ellipse, two dark eyes and a mouth, with its alpha mask."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        b = 0.32 * h
        a = min(0.75 * b, 0.3 * w)
        self.ph, self.pw = int(2 * b) + 2, int(2 * a) + 2
        y, x = np.mgrid[0 : self.ph, 0 : self.pw].astype(np.float64)
        y, x = (y - self.ph / 2) / b, (x - self.pw / 2) / a
        skin = np.array(((226, 184, 156), (200, 152, 120), (152, 108, 84), (236, 204, 180)))
        colour = skin[rng.integers(len(skin))] * (1.0 - 0.12 * x - 0.08 * y)[:, :, None]
        eye_y = -0.15 + rng.uniform(-0.04, 0.04)
        for side in (-1, 1):
            eye = ((x - side * 0.38) / 0.15) ** 2 + ((y - eye_y) / 0.09) ** 2 < 1
            colour[eye] = (40, 32, 32)
        mouth = (x / 0.34) ** 2 + ((y - 0.5) / 0.07) ** 2 < 1
        colour[mouth] = (125, 50, 55)
        self.colour = colour.astype(np.float32)
        self.mask = np.clip((1 - x**2 - y**2) * 8, 0, 1)[:, :, None].astype(np.float32)
        self.cy = int(h * rng.uniform(0.45, 0.6) - self.ph / 2)
        self.cx = int(w * rng.uniform(0.35, 0.65) - self.pw / 2)

    def paste(self, frame: np.ndarray, dy: int, dx: int) -> None:
        h, w = frame.shape[:2]
        y = min(max(self.cy + dy, 0), max(h - self.ph, 0))
        x = min(max(self.cx + dx, 0), max(w - self.pw, 0))
        region = frame[y : y + self.ph, x : x + self.pw]
        ph, pw = region.shape[:2]
        m = self.mask[:ph, :pw]
        region[:] = region * (1 - m) + self.colour[:ph, :pw] * m


class SceneLook:
    """Precomputed appearance of one scene stretch: a base image larger than the frame, of which
    each frame shows a drifting window."""

    def __init__(self, rng: np.random.Generator, scene: str, h: int, w: int):
        make, (share_y, share_x), self.speed = _SCENES[scene]
        self.h, self.w = h, w
        self.pad_y, self.pad_x = max(1, int(share_y * h)), max(1, int(share_x * w))
        self.base = make(rng, h + 2 * self.pad_y, w + 2 * self.pad_x).astype(np.float32)
        self.phase = float(rng.uniform(0, 2 * np.pi))
        self.face = _FaceSprite(rng, h, w) if scene == "face" else None
        self.haze_share = float(rng.uniform(0.55, 0.70)) if scene == "smoke" else 0.0

    def render(self, t: float) -> np.ndarray:
        oy = self.pad_y + int(self.pad_y * np.sin(self.speed * t + self.phase))
        ox = self.pad_x + int(self.pad_x * np.sin(0.7 * self.speed * t + 2 * self.phase))
        frame = self.base[oy : oy + self.h, ox : ox + self.w]
        if self.face is not None:
            frame = frame.copy()
            wobble = np.sin(0.9 * t + self.phase)
            self.face.paste(frame, int(0.03 * self.h * wobble), int(0.04 * self.w * wobble))
        return frame
