"""Surgical phase recognition metrics over per-frame label arrays, pure (numpy only).

Conventions follow Funke et al. 2023, "Metrics matter in surgical phase recognition":

* **Ground truth is human labels only.** A truth array holds a class index per frame, or
  ``-1`` (:data:`UNSCORED`) for a frame that is unlabelled or whose label came from a model;
  such frames are never scored, whatever was predicted on them.
* **Per video first.** Every figure is computed on each video on its own.
* **Absent phases are skipped.** A phase that does not occur in a video's ground truth has no
  precision, recall, F1 or Jaccard in that video (it is undefined, not zero). Frames wrongly
  predicted as that phase still count: as false negatives of the phase the frame really is.
  A phase that occurs but is never predicted scores precision 0 (and recall, F1, Jaccard 0).
* **Averaging.** Per phase: the mean over the videos in which the phase occurs. Macro figure:
  the mean of those per-phase means over the phases that occur in at least one video.
  Accuracy: the fraction of a video's scored frames predicted right, then the mean over videos.
  A breakdown by source (hospital) averages the same way over that source's videos only.

**Relaxed boundaries.** Annotators disagree by a few seconds about where a phase starts, so
the relaxed variant forgives confusions between the two phases of a true transition near it.
Let ``W = round(window_s * fps)`` frames. Transitions are read from the video's own ground
truth: two consecutive *scored* frames ``p < q`` with labels ``a != b`` (``q = p + 1`` unless
unscored frames lie between them) are a transition ``a -> b``; its window is the ``W`` frames
up to and including ``p`` and the ``W`` frames from ``q`` on, i.e. ``[p + 1 - W, q + W)``. A
scored frame in that window whose truth is ``a`` and prediction ``b``, or truth ``b`` and
prediction ``a``, counts as correct. Nothing else is forgiven: predicting a third phase near a
transition, or ``b`` more than ``W`` frames before it, stays an error. Adjacency therefore
comes from the order of phases in each video, never from phase indices. (The M2CAI 2016
relaxed script that is widely reused hard-codes exceptions by phase number for its 8-phase
workflow; applied to Cholec80's 7 phases those exceptions land on the wrong phases.) Relaxed
figures are the standard ones computed on the relaxed predictions, and are reported next to
them under the same names prefixed with ``relaxed_``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

UNSCORED = -1
DEFAULT_WINDOW_S = 10.0
VARIANTS: tuple[str, ...] = ("standard", "relaxed")
PHASE_FIGURES: tuple[str, ...] = ("precision", "recall", "f1", "jaccard")
BASE_METRICS: tuple[str, ...] = ("accuracy", "macro_precision", "macro_recall", "macro_f1",
                                 "macro_jaccard")
METRICS: tuple[str, ...] = (*BASE_METRICS, *(f"relaxed_{m}" for m in BASE_METRICS))
"""Every metric name a gate may name: standard figures, then their relaxed counterparts."""


def check_metric(name: str, where: str = "metric") -> str:
    """``name`` if it is one of :data:`METRICS`; ValueError naming the known ones otherwise."""
    if name not in METRICS:
        raise ValueError(f"{where}: unknown metric {name!r}; known: {', '.join(METRICS)}")
    return name


@dataclass(frozen=True)
class LabelledVideo:
    """One video to score: per-frame ground truth (``-1`` unscored) and predicted class."""

    video_id: str
    source: str
    fps: float
    truth: np.ndarray
    pred: np.ndarray


def relax(truth: np.ndarray, pred: np.ndarray, window: int) -> np.ndarray:
    """``pred`` with the boundary confusions of the module docstring set to the truth.

    ``window`` is ``W`` in frames. Returns a new array; unscored frames keep their prediction.
    """
    truth, pred = _arrays(truth, pred)
    out = pred.copy()
    scored = np.flatnonzero(truth >= 0)
    if window <= 0 or scored.size < 2:
        return out
    lab = truth[scored]
    for k in np.flatnonzero(lab[1:] != lab[:-1]):
        p, q, a, b = scored[k], scored[k + 1], lab[k], lab[k + 1]
        lo, hi = max(p + 1 - window, 0), min(q + window, truth.size)
        t, y = truth[lo:hi], out[lo:hi]
        swap = ((t == a) & (y == b)) | ((t == b) & (y == a))
        y[swap] = t[swap]
    return out


def phase_scores(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> dict:
    """One video's figures: ``{"accuracy", "frames", "phases": {index: {figure: value}}}``.

    Only phases present in the (scored) truth appear in ``phases``; ``accuracy`` is None for a
    video with no scored frame.
    """
    truth, pred = _arrays(truth, pred)
    keep = truth >= 0
    t, y = truth[keep], pred[keep]
    if t.size == 0:
        return {"accuracy": None, "frames": 0, "phases": {}}
    if t.max() >= num_classes:
        raise ValueError(f"truth holds class {int(t.max())}, but there are {num_classes} classes")
    phases = {}
    for c in np.unique(t):
        tp = int(np.sum((t == c) & (y == c)))
        fp = int(np.sum((t != c) & (y == c)))
        fn = int(np.sum((t == c) & (y != c)))
        phases[int(c)] = {
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "jaccard": tp / (tp + fp + fn),
        }
    return {"accuracy": float(np.mean(t == y)), "frames": int(t.size), "phases": phases}


def video_entry(video: LabelledVideo, labels: Sequence[str],
                window_s: float = DEFAULT_WINDOW_S) -> dict:
    """A video's standard and relaxed figures, phases named (the ``per_video`` entries)."""
    window = round(window_s * video.fps)
    out = {"video_id": video.video_id, "source": video.source}
    for variant, pred in (("standard", video.pred),
                          ("relaxed", relax(video.truth, video.pred, window))):
        s = phase_scores(video.truth, pred, len(labels))
        out["frames"] = s["frames"]
        out[variant] = {"accuracy": s["accuracy"],
                        "phases": {labels[c]: v for c, v in s["phases"].items()}}
    return out


def summarise(entries: Iterable[Mapping], labels: Sequence[str]) -> dict:
    """Suite figures from per-video entries, averaged as the module docstring says.

    Returns ``{"summary": {metric: value}, "per_phase": {variant: {phase: {figure: value}}}}``;
    a metric with no video to average is None, a phase no video holds is left out.
    """
    entries = [e for e in entries if e["frames"] > 0]
    summary: dict[str, float | None] = {}
    per_phase: dict[str, dict] = {}
    for variant in VARIANTS:
        acc, per = _stack(entries, labels, variant)
        prefix = "" if variant == "standard" else "relaxed_"
        phase_mean, macro = _average(per[None])
        summary[f"{prefix}accuracy"] = float(acc.mean()) if acc.size else None
        for j, fig in enumerate(PHASE_FIGURES):
            m = macro[0, j]
            summary[f"{prefix}macro_{fig}"] = None if np.isnan(m) else float(m)
        per_phase[variant] = {
            labels[c]: {fig: float(phase_mean[0, c, j]) for j, fig in enumerate(PHASE_FIGURES)}
            | {"videos": int(np.sum(~np.isnan(per[:, c, 0])))}
            for c in range(len(labels)) if not np.isnan(phase_mean[0, c, 0])
        }
    return {"summary": summary, "per_phase": per_phase}


def evaluate(videos: Sequence[LabelledVideo], labels: Sequence[str],
             window_s: float = DEFAULT_WINDOW_S) -> dict:
    """Everything the gate and the report read, as plain JSON-able data::

        {"labels", "window_s", "summary": {metric: value}, "per_phase": {variant: {phase: ...}},
         "per_source": {source: {metric: value}}, "per_video": [entry, ...],
         "confusion": [[frames]]}  # rows true class, columns predicted, scored frames only
    """
    labels = list(labels)
    entries = [video_entry(v, labels, window_s) for v in videos]
    out = {"labels": labels, "window_s": window_s} | summarise(entries, labels)
    out["per_source"] = {
        src: summarise([e for e in entries if e["source"] == src], labels)["summary"]
        for src in sorted({e["source"] for e in entries})
    }
    out["per_video"] = entries
    out["confusion"] = confusion(videos, len(labels)).tolist()
    return out


def confusion(videos: Iterable[LabelledVideo], num_classes: int) -> np.ndarray:
    """Frames pooled over ``videos``: row = true class, column = predicted (scored frames)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for v in videos:
        t, y = _arrays(v.truth, v.pred)
        keep = (t >= 0) & (y >= 0) & (y < num_classes)
        np.add.at(cm, (t[keep], y[keep]), 1)
    return cm


def paired_bootstrap(candidate: Sequence[Mapping], baseline: Sequence[Mapping],
                     labels: Sequence[str], metric: str, *, resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Confidence interval of ``metric(candidate) - metric(baseline)`` over field videos.

    Both lists hold per-video entries of the same videos (matched by ``video_id``). Each
    resample draws videos with replacement and scores both models on the same draw, so the
    videos' difficulty cancels out. Percentile interval; the same seed gives the same interval.
    Returns ``{"difference", "low", "high", "confidence", "resamples", "videos"}``.
    """
    check_metric(metric)
    base_by_id = {e["video_id"]: e for e in baseline}
    ids = sorted(e["video_id"] for e in candidate if e["frames"] > 0)
    missing = [i for i in ids if i not in base_by_id]
    if missing:
        raise ValueError(f"baseline has no entry for videos {missing[:5]}")
    cand_by_id = {e["video_id"]: e for e in candidate}
    cand = [cand_by_id[i] for i in ids]
    base = [base_by_id[i] for i in ids]
    variant = "relaxed" if metric.startswith("relaxed_") else "standard"
    name = metric.removeprefix("relaxed_")
    observed = _metric_of(*_stack(cand, labels, variant), name) - _metric_of(
        *_stack(base, labels, variant), name)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(resamples, len(ids))) if ids else np.zeros((0, 0), int)
    diffs = (_metric_of(*_stack(cand, labels, variant), name, draws)
             - _metric_of(*_stack(base, labels, variant), name, draws))
    diffs = diffs[~np.isnan(diffs)]
    alpha = (1 - confidence) / 2
    low, high = ((float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha)))
                 if diffs.size else (float("nan"), float("nan")))
    return {"difference": float(observed[0]), "low": low, "high": high,
            "confidence": confidence, "resamples": resamples, "videos": len(ids)}


def _metric_of(acc: np.ndarray, per: np.ndarray, name: str,
               draws: np.ndarray | None = None) -> np.ndarray:
    """``name`` (a base metric) for each row of ``draws`` (video indices); one row: all."""
    if draws is None:
        draws = np.arange(acc.size)[None]
    if name == "accuracy":
        return acc[draws].mean(axis=1) if acc.size else np.full(len(draws), np.nan)
    _, macro = _average(per[draws])
    return macro[:, PHASE_FIGURES.index(name.removeprefix("macro_"))]


def _stack(entries: Sequence[Mapping], labels: Sequence[str],
           variant: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-video accuracy ``(V,)`` and figures ``(V, C, 4)`` with NaN for absent phases."""
    index = {lbl: i for i, lbl in enumerate(labels)}
    acc = np.array([e[variant]["accuracy"] for e in entries], dtype=float)
    per = np.full((len(entries), len(labels), len(PHASE_FIGURES)), np.nan)
    for v, e in enumerate(entries):
        for phase, figs in e[variant]["phases"].items():
            per[v, index[phase]] = [figs[f] for f in PHASE_FIGURES]
    return acc, per


def _average(per: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(B, V, C, F)`` -> per-phase means over videos ``(B, C, F)`` and their mean over phases
    ``(B, F)``; NaN where nothing was present to average."""
    present = ~np.isnan(per)
    n = present.sum(axis=1)
    total = np.where(present, per, 0.0).sum(axis=1)
    phase_mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    have = ~np.isnan(phase_mean)
    k = have.sum(axis=1)
    macro = np.where(k > 0, np.where(have, phase_mean, 0.0).sum(axis=1) / np.maximum(k, 1),
                     np.nan)
    return phase_mean, macro


def _arrays(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth, dtype=np.int64)
    y = np.asarray(pred, dtype=np.int64)
    if t.ndim != 1 or t.shape != y.shape:
        raise ValueError(f"truth and prediction must be 1-D arrays of one length, got shapes "
                         f"{t.shape} and {y.shape}")
    return t, y
