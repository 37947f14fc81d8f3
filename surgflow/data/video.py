"""Opening, probing and hashing video files, and resolving video URIs safely.

decord facts that shape this module: a ``VideoReader`` created before a fork hangs or crashes
the forked process, so readers are created where they are used (per process, per DataLoader
worker) with ``num_threads=1``; and a container index can claim more frames than the file holds
(truncated uploads), so probing decodes the last frame too.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, computed_field

from surgflow.errors import UnsafeURI, VideoError

HASH_CHUNK = 1 << 20


class VideoInfo(BaseModel):
    """What probing a video file finds out: frame count, frame rate and frame size.

    Every other record of a video is this plus what it adds: the registered record
    (:class:`surgflow.data.registry.VideoRecord`), a video the loader reads
    (:class:`surgflow.data.clips.ClipVideo`), a synthetic video with its ground truth.
    """

    model_config = ConfigDict(frozen=True)

    num_frames: int
    fps: float
    width: int
    height: int

    @computed_field
    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def open_reader(path: str | Path, width: int = -1, height: int = -1):
    """A decord ``VideoReader`` on one thread; raise VideoError naming the file on failure."""
    import decord

    try:
        return decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    except Exception as e:  # decord raises its own DECORDError and RuntimeError
        raise VideoError(str(path), f"cannot be decoded: {_short(e)}") from e


def probe(path: str | Path) -> VideoInfo:
    """Frame count, fps and size of a video, checked by decoding its first and last frames."""
    p = Path(path)
    if not p.exists():
        raise VideoError(str(p), "file does not exist")
    if not p.is_file():
        raise VideoError(str(p), "not a regular file")
    if p.stat().st_size == 0:
        raise VideoError(str(p), "file is empty")
    vr = open_reader(p)
    n = len(vr)
    if n <= 0:
        raise VideoError(str(p), "no video frames")
    fps = float(vr.get_avg_fps())
    if not fps > 0:
        raise VideoError(str(p), f"invalid frame rate {fps}")
    try:
        first = vr[0].shape
        vr.seek(0)
        last = vr[n - 1].shape
    except Exception as e:
        raise VideoError(str(p), f"truncated or corrupt: frame decode failed ({_short(e)})") from e
    if first != last:
        raise VideoError(str(p), f"frame size changes within the video ({first} vs {last})")
    height, width = int(first[0]), int(first[1])
    return VideoInfo(num_frames=int(n), fps=fps, width=width, height=height)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (videos can be many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def resolve_video_uri(uri: str, roots: list[Path]) -> Path:
    """The local path a video ``uri`` names, symlinks followed, if it lies inside ``roots``.

    Accepts a plain path or a ``file://`` URI; any other scheme, or a path that resolves outside
    every root, raises UnsafeURI without the file being opened.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise UnsafeURI(f"video uri must be a non-empty string, got {uri!r}")
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UnsafeURI(f"video uri {uri!r}: file URIs must name a local path")
        raw = unquote(parsed.path)
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:2] == ":"):
        raw = uri
    else:
        raise UnsafeURI(
            f"video uri {uri!r}: unsupported scheme {parsed.scheme!r} (use a path or file://)"
        )
    if "\x00" in raw:
        raise UnsafeURI(f"video uri {uri!r} contains a NUL byte")
    resolved = Path(raw).expanduser().resolve()
    for root in roots:
        if resolved.is_relative_to(root.resolve()):
            return resolved
    allowed = ":".join(str(r) for r in roots)
    raise UnsafeURI(
        f"video uri {uri!r} resolves to {resolved}, outside SURGFLOW_VIDEO_ROOTS ({allowed})"
    )


_DECORD_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\]\s*\S+\.cc:\d+:\s*(Error:\s*)?")


def _short(e: BaseException) -> str:
    text = _DECORD_NOISE.sub("", " ".join(str(e).split())).strip()
    return text[:200] if text else type(e).__name__
