"""Which ranges annotators should label within a budget of seconds: where the model is least
sure, its phase transitions first, spread over transitions, phases and videos.

Today's feedback tasks (:mod:`surgflow.feedback.tasks`) are the inference segments whose
confidence is below a threshold, each whole. A segment's confidence is the mean over its frames,
so a long phase the model is lukewarm about but right on costs minutes of an annotator's time,
while its confident mistakes, most of them seconds either side of a phase change, are never
asked about. :func:`select` spends the budget on windows instead:

- *transition windows*: ``window_s`` seconds centred on each boundary between consecutive
  predicted segments (a run of short segments, where the model flickers, becomes one window
  from the first boundary's window to the last's);
- *phase windows*: the rest of each video cut into pieces of at most ``window_s`` seconds.

A window's uncertainty is one minus the frame-weighted mean confidence of its frames; a
transition window scores ``transition_weight`` plus its uncertainty, a phase window its
uncertainty. Picks are greedy: the window with the highest score, discounted by
``repeat_decay`` for each window of its kind picked already (the same predicted transition, say
CalotTriangleDissection → ClippingCutting, in any video; or the same predicted phase) and by
``video_decay`` for each window picked in its video, until the budget is spent; the last pick
is cut to what is left of it (a transition window keeps its middle). Pure: plain data in,
ranges out.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from surgflow.feedback.schemas import InferenceEvent

DEFAULT_WINDOW_S = 4.0  # tuned on seeds 7 and 8 of bench.annotation_value (4 s > 6 > 10 > 20)


@dataclass(frozen=True)
class Window:
    """A candidate range ``[start_frame, end_frame)``: ``kind`` transition or phase, ``key``
    the predicted labels it is about, ``base`` its score before any discount."""

    video_id: str
    start_frame: int
    end_frame: int
    kind: str
    key: tuple[str, ...]
    uncertainty: float
    base: float

    def seconds(self, fps: float) -> float:
        return (self.end_frame - self.start_frame) / fps


@dataclass(frozen=True)
class Pick(Window):
    """A window picked to label (the last one cut to what was left of the budget) and its
    ``score`` when it was picked."""

    score: float


def select(events: Sequence[InferenceEvent], budget_s: float, fps: Mapping[str, float], *,
           window_s: float = DEFAULT_WINDOW_S, transition_weight: float = 1.0,
           repeat_decay: float = 0.5, video_decay: float = 0.8) -> list[Pick]:
    """Ranges of the videos of ``events`` (one inference event per video) to label, at most
    ``budget_s`` seconds in all, in the order they were picked. ``fps`` gives each video's
    frame rate; ranges never overlap and lie inside the frames the event's segments cover."""
    if budget_s < 0 or math.isnan(budget_s):
        raise ValueError(f"budget_s must be a non-negative number of seconds, got {budget_s}")
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    if not (0 < repeat_decay <= 1 and 0 < video_decay <= 1):
        raise ValueError(f"repeat_decay and video_decay must lie in (0, 1], got {repeat_decay} "
                         f"and {video_decay}")
    seen: set[str] = set()
    windows: list[Window] = []
    for event in events:
        if event.video_id in seen:
            raise ValueError(f"video {event.video_id!r} has more than one inference event; "
                             "select over one event per video (the latest model's)")
        seen.add(event.video_id)
        rate = fps.get(event.video_id)
        if rate is None or rate <= 0:
            raise ValueError(f"no frame rate for video {event.video_id!r} (fps has "
                             f"{sorted(fps)[:5]}); one is needed to turn seconds into frames")
        windows += candidates(event, max(1, round(window_s * rate)), transition_weight)
    return _greedy(windows, budget_s, fps, repeat_decay, video_decay)


def candidates(event: InferenceEvent, window: int, transition_weight: float = 1.0
               ) -> list[Window]:
    """The transition and phase windows of one video (``window`` in frames), in frame order,
    together covering every frame its segments cover exactly once (the segments of an inference
    event cover the video without gaps, as the chain runner's timeline does)."""
    segs = sorted(event.segments, key=lambda s: s.start_frame)
    if not segs:
        return []
    begin, end = segs[0].start_frame, max(s.end_frame for s in segs)
    half = window // 2
    spans: list[list[int]] = []  # merged transition windows: [start, end, first seg, last seg]
    for i in range(1, len(segs)):
        b = segs[i].start_frame
        lo, hi = max(begin, b - half), min(end, b - half + window)
        if spans and lo <= spans[-1][1]:
            spans[-1][1], spans[-1][3] = max(spans[-1][1], hi), i
        else:
            spans.append([lo, hi, i - 1, i])

    def uncertainty(lo: int, hi: int) -> float:
        total = sum((min(hi, s.end_frame) - max(lo, s.start_frame)) * s.confidence
                    for s in segs if s.end_frame > lo and s.start_frame < hi)
        return 1.0 - total / (hi - lo)

    def phase(lo: int, hi: int) -> str:
        held = Counter[str]()
        for s in segs:
            if s.end_frame > lo and s.start_frame < hi:
                held[s.label] += min(hi, s.end_frame) - max(lo, s.start_frame)
        return max(sorted(held), key=lambda lbl: held[lbl])

    out: list[Window] = []
    cursor = begin
    for lo, hi, first, last in [*spans, [end, end, -1, -1]]:
        gap = lo - cursor
        if gap > 0:  # phase windows: the gap in equal pieces of at most `window` frames
            pieces = -(-gap // window)
            edges = [cursor + gap * k // pieces for k in range(pieces + 1)]
            for a, b in pairwise(edges):
                u = uncertainty(a, b)
                out.append(Window(event.video_id, a, b, "phase", (phase(a, b),), u, u))
        if hi > lo:
            u = uncertainty(lo, hi)
            key = (segs[first].label, segs[last].label)
            out.append(Window(event.video_id, lo, hi, "transition", key, u,
                               transition_weight + u))
        cursor = max(cursor, hi)
    return out


def _greedy(windows: list[Window], budget_s: float, fps: Mapping[str, float],
            repeat_decay: float, video_decay: float) -> list[Pick]:
    """Pick the best discounted window until the budget is spent (lazy re-scoring: a window's
    score only falls as others are picked, so a popped window whose score is current is the
    best one left)."""
    kinds: Counter[tuple[str, tuple[str, ...]]] = Counter()
    videos: Counter[str] = Counter()

    def score(w: Window) -> float:
        return (w.base * repeat_decay ** kinds[(w.kind, w.key)]
                * video_decay ** videos[w.video_id])

    # ties: earlier video, earlier frame (deterministic)
    heap = [(-score(w), w.video_id, w.start_frame, i) for i, w in enumerate(windows)]
    heapq.heapify(heap)
    left = budget_s
    picks: list[Pick] = []
    while heap and left > 0:
        neg, _, _, i = heapq.heappop(heap)
        w = windows[i]
        now = score(w)
        if now < -neg - 1e-12:
            heapq.heappush(heap, (-now, w.video_id, w.start_frame, i))
            continue
        rate = fps[w.video_id]
        frames = min(w.end_frame - w.start_frame, math.floor(left * rate + 1e-9))
        if frames <= 0:
            break
        # a transition window cut short keeps its middle, where the boundary is
        start = w.start_frame + ((w.end_frame - w.start_frame - frames) // 2
                                 if w.kind == "transition" else 0)
        picks.append(Pick(w.video_id, start, start + frames, w.kind, w.key, w.uncertainty,
                          w.base, now))
        left -= frames / rate
        kinds[(w.kind, w.key)] += 1
        videos[w.video_id] += 1
    return picks
