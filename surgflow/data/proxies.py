"""Training proxies: small, short-GOP copies of a video at the training frame rate and size.

Sampling 1 fps from a 25 fps original with a 250-frame GOP decodes about 25 frames per frame
used. A proxy keeps every ``step``-th source frame (proxy frame ``k`` is source frame
``k * step``), scaled so its short side is ``short_side``, encoded with a GOP of ``gop`` frames,
so the loader decodes only what it uses and can seek cheaply. Proxies are content-addressed by
the source's sha256 and the proxy spec, under ``SURGFLOW_HOME/proxies``; the original is never
modified. A proxy is published with a no-overwrite link, its JSON sidecar last, so a crash
leaves either a complete proxy or none, and concurrent writers of one proxy agree.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

from pydantic import BaseModel, Field

from surgflow.data.clip_sampling import ClipSpec, frame_step
from surgflow.errors import VideoError
from surgflow.storage import json_bytes, publish_exclusive, temp_path, write_exclusive

PROXY_FORMAT = 1


class ProxySpec(BaseModel, frozen=True):
    """How a proxy is made: every ``step``-th frame, short side ``short_side``, GOP ``gop``."""

    step: int = Field(ge=1)
    short_side: int = Field(ge=8, le=4096)
    gop: int = Field(16, ge=1, le=1000)
    crf: int = Field(20, ge=0, le=51)

    @classmethod
    def for_clip(cls, clip: ClipSpec, video_fps: float, gop: int = 16) -> ProxySpec:
        """The proxy that serves ``clip`` on a video at ``video_fps``: its step, its size."""
        return cls(step=frame_step(video_fps, clip.fps), short_side=clip.size, gop=gop)


class Proxy(BaseModel, frozen=True):
    """A written proxy: where it is and how its frames map to the source's."""

    path: str
    source_sha256: str
    spec: ProxySpec
    fps: float
    width: int
    height: int
    num_frames: int
    format: int = PROXY_FORMAT

    def serves(self, frames, short_side: int) -> bool:
        """Whether source frames ``frames`` can be read from this proxy at short side
        ``short_side``: every frame on the proxy's grid and within it, and no upscaling."""
        import numpy as np

        f = np.asarray(frames)
        return bool(
            self.spec.short_side >= short_side
            and np.all(f % self.spec.step == 0) and np.all(f // self.spec.step < self.num_frames)
        )


#: Frame widths whose RGB frames decord 0.6 cannot copy out ("DECORDArrayCopyFromTo: The size
#: must exactly match"), at any height, natively or scaled (measured on widths 8..520).
DECORD_BAD_WIDTHS = frozenset({8, 16, 24, 48, 72})


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(w, h)`` with the short side ``short_side`` (never upscaled), aspect kept, both even.

    A width decord cannot read back is widened to the next multiple of 8 it can (the loader
    crops the extra columns), so a proxy is always readable.
    """
    scale = min(1.0, short_side / min(width, height))
    w, h = round(width * scale), round(height * scale)
    w, h = max(2, w + (w % 2)), max(2, h + (h % 2))
    while w in DECORD_BAD_WIDTHS:
        w += 8
    return w, h


class ProxyStore:
    """Proxies under ``home/proxies``, named by source content and spec."""

    def __init__(self, home: Path):
        self.root = Path(home) / "proxies"

    @staticmethod
    def key(source_sha256: str, spec: ProxySpec) -> str:
        text = json.dumps([PROXY_FORMAT, source_sha256, spec.model_dump()], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _paths(self, source_sha256: str, spec: ProxySpec) -> tuple[Path, Path]:
        key = self.key(source_sha256, spec)
        base = self.root / key[:2] / key
        return base.with_suffix(".mp4"), base.with_suffix(".json")

    def find(self, source_sha256: str, spec: ProxySpec) -> Proxy | None:
        """The proxy of this content and spec, if one has been published."""
        _, meta = self._paths(source_sha256, spec)
        if not meta.is_file():
            return None
        return Proxy.model_validate_json(meta.read_text())

    def ensure(self, source_path: str | Path, source_sha256: str, spec: ProxySpec) -> Proxy:
        """The proxy of this content and spec, written first if missing (once)."""
        found = self.find(source_sha256, spec)
        if found is not None:
            return found
        video, meta = self._paths(source_sha256, spec)
        if not video.is_file():
            tmp = temp_path(video.parent, suffix=".mp4")
            try:
                info = write_proxy(source_path, tmp, spec)
            except BaseException:
                tmp.unlink()
                raise
            # False: another writer published the same content first; either copy serves
            publish_exclusive(tmp, video)
        else:
            info = _describe(video)
        proxy = Proxy(path=str(video), source_sha256=source_sha256, spec=spec, **info)
        write_exclusive(meta, json_bytes(proxy.model_dump(mode="json")))
        return Proxy.model_validate_json(meta.read_text())


def write_proxy(source: str | Path, dest: str | Path, spec: ProxySpec) -> dict:
    """Encode the proxy of ``source`` into ``dest``; returns fps, width, height, num_frames."""
    import av

    try:
        src = av.open(str(source))
    except Exception as e:
        raise VideoError(str(source), f"cannot be opened to write a proxy: {e}") from e
    with src, av.open(str(dest), "w", format="mp4") as out:
        in_stream = src.streams.video[0]
        in_stream.thread_type = "AUTO"
        rate = Fraction(in_stream.average_rate or in_stream.guessed_rate or 25) / spec.step
        rate = rate.limit_denominator(1001)
        w, h = scaled_size(in_stream.codec_context.width, in_stream.codec_context.height,
                           spec.short_side)
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = spec.gop
        stream.codec_context.thread_count = 1
        stream.options = {
            "preset": "veryfast", "crf": str(spec.crf), "bf": "0",
            "x264-params": f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0",
        }
        written = 0
        try:
            for i, frame in enumerate(src.decode(in_stream)):
                if i % spec.step:
                    continue
                small = frame.reformat(width=w, height=h, format="yuv420p")
                small.pts, small.time_base = written, 1 / rate
                for packet in stream.encode(small):
                    out.mux(packet)
                written += 1
            for packet in stream.encode():
                out.mux(packet)
        except av.error.FFmpegError as e:
            raise VideoError(str(source), f"decoding failed at frame {written * spec.step} "
                             f"while writing a proxy: {e}") from e
    if written == 0:
        raise VideoError(str(source), "no frames decoded while writing a proxy")
    return {"fps": float(rate), "width": w, "height": h, "num_frames": written}


def _describe(path: Path) -> dict:
    from surgflow.data.video import probe

    info = probe(path)
    return {"fps": info.fps, "width": info.width, "height": info.height,
            "num_frames": info.num_frames}
