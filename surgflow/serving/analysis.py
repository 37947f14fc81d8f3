"""One video through the served chain: the checks in SPEC §8's order, then the analysis.

The same function serves ``POST /v1/analyze`` and the fleet: the uri is resolved through the one
video-roots rule before anything is opened (UnsafeURI, 403), the procedure must be served
(UnknownName 404, NotServed 409), the file must exist (NotFound 404), must decode (VideoError
422) and be within the duration limit (TooLong 422); the runner stops at the analysis deadline
(DeadlineExceeded 422). Decoded frames only ever live in memory; what is logged is ids, the model
version and timeline sizes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from surgflow.config import Settings
from surgflow.data.privacy import OUT_OF_BODY, PRIVACY, blackout_ranges
from surgflow.data.ranges import contains
from surgflow.data.taxonomy import is_track
from surgflow.data.video import probe, resolve_video_uri
from surgflow.errors import BadInput, NotFound
from surgflow.serving.events import analysis_response, inference_event
from surgflow.serving.pool import ModelPool, NotServed, Served

log = logging.getLogger(__name__)


class TooLong(BadInput):
    """A video is longer than the service analyses (SURGFLOW_SERVE_MAX_VIDEO_S)."""


@dataclass(frozen=True)
class Outcome:
    """An analysis: the HTTP answer, the event to publish and who made it."""

    response: dict[str, Any]
    event: dict[str, Any]
    served: Served
    seconds: float


def locate(uri: str, settings: Settings):
    """The local file a request's uri names, or UnsafeURI / NotFound, without opening it."""
    path = resolve_video_uri(uri, settings.resolved_video_roots())
    if not path.exists():
        raise NotFound(f"video uri {uri!r}: no such file")
    if not path.is_file():
        raise NotFound(f"video uri {uri!r}: not a regular file")
    return path


def out_of_body(pool: ModelPool, path, info, settings: Settings) -> dict[str, Any] | None:
    """The production detector's out-of-body ranges of the video at ``path`` and what
    redaction blacks out around them; None when no detector is served."""
    try:
        detector = pool.get(PRIVACY)
    except NotServed:
        return None
    tl = detector.runner.analyze(path, info=info,
                                 deadline_s=settings.serve_max_analysis_s).timeline
    ranges = [(s["start_frame"], s["end_frame"]) for s in tl.segments(detector.labels)
              if s["label"] == OUT_OF_BODY]
    return {"model": {"name": detector.name, "version": detector.version}, "ranges": ranges,
            "blackout": blackout_ranges(ranges, info.num_frames, info.fps)}


def analyse(pool: ModelPool, settings: Settings, *, video_id: str, uri: str,
            procedure: str) -> Outcome:
    """Analyse one video with ``procedure``'s production chain; see the module docstring."""
    path = locate(uri, settings)
    served = pool.get(procedure)
    info = probe(path)
    limit = settings.serve_max_video_s
    if info.duration_s > limit:
        raise TooLong(f"video {video_id!r} lasts {info.duration_s:.0f} s; this service analyses "
                      f"videos up to {limit:.0f} s (SURGFLOW_SERVE_MAX_VIDEO_S)")
    t0 = time.perf_counter()
    result = served.runner.analyze(path, info=info, deadline_s=settings.serve_max_analysis_s)
    labels = served.labels
    segments = result.timeline.segments(labels)
    moments = result.timeline.key_moments(labels, result.fps)
    event = inference_event(video_id=video_id, procedure=procedure, model_name=served.name,
                            version=served.version, segments=segments)
    privacy = None
    if not is_track(procedure):
        privacy = out_of_body(pool, path, info, settings)
        if privacy is not None:
            # no moment of a range people may not see is pointed at
            black = privacy["blackout"]
            moments = [m for m in moments if not contains(black, m["frame"])]
    response = analysis_response(event, fps=result.fps, num_frames=result.num_frames,
                                 key_moments=moments)
    if not is_track(procedure):
        response["out_of_body"] = None if privacy is None else {
            "model": privacy["model"],
            "segments": [{"start_frame": s, "end_frame": e} for s, e in privacy["ranges"]]}
    seconds = time.perf_counter() - t0
    log.info("analysed %s with %s@%d: %d frames, %d segments, %d key moments in %.2f s",
             video_id, served.name, served.version, result.num_frames, len(segments),
             len(moments), seconds)
    return Outcome(response, event, served, seconds)
