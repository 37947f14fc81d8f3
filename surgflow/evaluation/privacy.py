"""How well an out-of-body detector protects privacy, pure: per-frame truth and predictions in,
the two figures the gate checks out.

Redaction blacks out every frame within the margin of a predicted out-of-body range
(:func:`surgflow.data.privacy.blackout_ranges`), so recall is measured after that widening:
the share of truly out-of-body frames that end up black (*recall*, which must be near 1: a
missed frame is a face shown to a person). The in-body frames the detector itself calls out
of the body, further than ``tolerance_s`` from a true range, are *lost* to its errors (a
chain predicts once a second, so a boundary it places within that second of the truth is its
sampling, not an error; those frames are counted in ``lost_raw``, a figure that only matters
on short clips). The margin costs more in-body frames on top, the same
for every detector (two seconds per range: on a 40-minute operation almost nothing, on a
half-minute clip a lot), so it is reported beside the loss (*blacked_out*) rather than held
against the detector. Unlabelled frames (-1 in the truth) count for none of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from surgflow.data.privacy import MARGIN_S, blackout_ranges
from surgflow.data.ranges import runs
from surgflow.evaluation.metrics import LabelledVideo


def blacked_out(pred: np.ndarray, positive: int, fps: float,
                margin_s: float = MARGIN_S) -> np.ndarray:
    """Per frame, whether redaction blacks it out given predictions ``pred``."""
    out = np.zeros(len(pred), dtype=bool)
    for s, e in blackout_ranges(runs(pred == positive), len(pred), fps, margin_s):
        out[s:e] = True
    return out


def privacy_scores(videos: Sequence[LabelledVideo], positive: int,
                   margin_s: float = MARGIN_S, tolerance_s: float = 1.0) -> dict:
    """Recall of out-of-body frames after redaction's margin, the share of in-body frames
    the detector calls out of the body beyond ``tolerance_s`` of a true range (``lost``; all
    of them: ``lost_raw``) and the share blacked out with the margin (``blacked_out``), over
    every frame of ``videos``; per video as well."""
    totals = dict.fromkeys(("hit", "pos", "lost", "raw", "black", "neg"), 0)
    per_video = []
    for v in videos:
        black = blacked_out(v.pred, positive, v.fps, margin_s)
        truth_pos, truth_neg = v.truth == positive, (v.truth >= 0) & (v.truth != positive)
        near = blacked_out(v.truth, positive, v.fps, tolerance_s)
        called = (v.pred == positive) & truth_neg
        row = {"hit": int((black & truth_pos).sum()), "pos": int(truth_pos.sum()),
               "lost": int((called & ~near).sum()), "raw": int(called.sum()),
               "black": int((black & truth_neg).sum()), "neg": int(truth_neg.sum())}
        per_video.append({"video_id": v.video_id, "source": v.source,
                          "out_of_body_frames": row["pos"],
                          "missed_frames": row["pos"] - row["hit"],
                          "in_body_frames": row["neg"], "lost_frames": row["lost"],
                          "lost_raw_frames": row["raw"],
                          "blacked_out_frames": row["black"]})
        for k, x in row.items():
            totals[k] += x
    pos, neg = totals["pos"], totals["neg"]
    return {"recall": totals["hit"] / pos if pos else None,
            "lost": totals["lost"] / neg if neg else None,
            "lost_raw": totals["raw"] / neg if neg else None,
            "blacked_out": totals["black"] / neg if neg else None,
            "out_of_body_frames": pos, "missed_frames": pos - totals["hit"],
            "in_body_frames": neg, "lost_frames": totals["lost"],
            "lost_raw_frames": totals["raw"],
            "blacked_out_frames": totals["black"], "margin_s": margin_s,
            "tolerance_s": tolerance_s,
            "per_video": per_video}
