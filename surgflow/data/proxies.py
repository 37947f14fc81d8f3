"""Training proxies: small, short-GOP copies of a video at the training frame rate and size.

Sampling 1 fps from a 25 fps original with a 250-frame GOP decodes about 25 frames per frame
used. A proxy keeps every ``step``-th source frame (proxy frame ``k`` is source frame
``k * step``), scaled so its short side is ``short_side``, encoded with a GOP of ``gop`` frames,
so the loader decodes only what it uses and can seek cheaply. Proxies are content-addressed by
the source's sha256 and the proxy spec, under ``SURGFLOW_HOME/proxies``; the original is never
modified. A proxy is published with a no-overwrite link, its JSON sidecar last, so a crash
leaves either a complete proxy or none, and concurrent writers of one proxy agree.

A spec may name source frames to black out (:attr:`ProxySpec.blackout`, as
:func:`surgflow.data.privacy.blackout_ranges` makes them): those proxy frames are black, every
other frame and the timing are as without. Every proxy, and every reel written through
:class:`H264Writer`, carries pictures and timing only: no creation time, no encoder or library
tags, no x264 settings string, nothing copied from the source's metadata.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from surgflow.data.clip_sampling import ClipSpec, frame_step
from surgflow.data.ranges import Ranges, check, contains
from surgflow.errors import VideoError
from surgflow.storage import json_bytes, publish_exclusive, temp_path, write_exclusive

PROXY_FORMAT = 1


class ProxySpec(BaseModel, frozen=True):
    """How a proxy is made: every ``step``-th frame, short side ``short_side``, GOP ``gop``;
    source frames in ``blackout`` (sorted, non-overlapping, see :func:`surgflow.data.ranges.check`)
    written black."""

    step: int = Field(ge=1)
    short_side: int = Field(ge=8, le=4096)
    gop: int = Field(16, ge=1, le=1000)
    crf: int = Field(20, ge=0, le=51)
    blackout: Ranges = ()

    @field_validator("blackout")
    @classmethod
    def _ranges_in_order(cls, ranges):
        return check(ranges, "blackout range")

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
        ``short_side``: every frame on the proxy's grid and within it, no upscaling, and
        nothing blacked out (those frames are not the source's)."""
        import numpy as np

        f = np.asarray(frames)
        return bool(
            not self.spec.blackout and self.spec.short_side >= short_side
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
        """The proxy's name: a hash of the format, the source's content and the spec."""
        fields = _validated(spec).model_dump()
        if not fields["blackout"]:
            # named as a spec without the field is, so proxies already on disk are still found
            del fields["blackout"]
        text = json.dumps([PROXY_FORMAT, source_sha256, fields], sort_keys=True)
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
        spec = _validated(spec)
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
    """Encode the proxy of ``source`` into ``dest``; returns fps, width, height, num_frames.

    Source frames in ``spec.blackout`` become black frames of the proxy's size; they are still
    decoded (the frames after them depend on them) but never scaled or encoded.
    """
    import av

    spec = _validated(spec)
    try:
        src = av.open(str(source))
    except Exception as e:
        raise VideoError(str(source), f"cannot be opened to write a proxy: {e}") from e
    with src:
        in_stream = src.streams.video[0]
        in_stream.thread_type = "AUTO"
        rate = Fraction(in_stream.average_rate or in_stream.guessed_rate or 25) / spec.step
        rate = rate.limit_denominator(1001)
        w, h = scaled_size(in_stream.codec_context.width, in_stream.codec_context.height,
                           spec.short_side)
        with H264Writer(dest, rate=rate, width=w, height=h, crf=spec.crf, gop=spec.gop,
                        threads=1) as out:
            try:
                for i, frame in enumerate(src.decode(in_stream)):
                    if i % spec.step:
                        continue
                    if contains(spec.blackout, i):
                        out.write_black()
                    else:
                        out.write(frame.reformat(width=w, height=h, format="yuv420p"))
            except av.error.FFmpegError as e:
                raise VideoError(str(source), f"decoding failed at frame {out.frames * spec.step}"
                                 f" while writing a proxy: {e}") from e
    if out.frames == 0:
        raise VideoError(str(source), "no frames decoded while writing a proxy")
    return {"fps": float(rate), "width": w, "height": h, "num_frames": out.frames}


#: the track's handler name; muxers otherwise write their own ("VideoHandler" names FFmpeg)
HANDLER_NAME = "Video"
#: drops every SEI NAL unit, among them x264's user data: its version and full settings
STRIP_SEI = "filter_units=remove_types=6"


class H264Writer:
    """An H.264 MP4 (yuv420p) that carries pictures and timing only, for files people see.

    The muxer runs bitexact (no ``encoder`` tag), no metadata is set but the track's handler
    name (:data:`HANDLER_NAME`), so creation and modification times stay 0, and x264's SEI is
    filtered out of the bitstream. Nothing of a source's metadata is copied: only frames are
    written. Frame ``k`` is shown at ``k / rate``. With ``gop``, key frames come every ``gop``
    frames (and around black runs) and there are no B-frames; without, x264 chooses.
    ``threads=0`` lets the encoder choose its thread count.

    Use as a context manager: leaving it normally flushes the encoder and finishes the file;
    leaving it on an exception closes the file unfinished.
    """

    def __init__(self, path: str | Path, *, rate: Fraction | int, width: int, height: int,
                 crf: int, gop: int | None = None, threads: int = 0,
                 preset: str = "veryfast"):
        import av
        import av.bitstream
        import numpy as np

        if width % 2 or height % 2:
            raise ValueError(f"{path}: frame size {width}x{height}: yuv420p needs even sides")
        rate = Fraction(rate)
        self.time_base = 1 / rate
        self.frames = 0
        self._after_black = False
        self._container = av.open(str(path), "w", format="mp4",
                                  options={"fflags": "+bitexact"})
        try:
            stream = self._container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.metadata["handler_name"] = HANDLER_NAME
            stream.codec_context.thread_count = threads
            options = {"preset": preset, "crf": str(crf)}
            if gop is not None:
                stream.codec_context.gop_size = gop
                options |= {"bf": "0",
                            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
            stream.options = options
            self._stream = stream
            # x264 writes its SEI in Annex B packets whatever the container, so the codec name
            # is all the filter needs
            self._sei = av.bitstream.BitStreamFilterContext(STRIP_SEI, "h264")
        except BaseException:
            self._container.close()
            raise
        # limited-range black (Y=16, U=V=128) decodes to RGB 0 exactly
        planes = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
        planes[:height] = 16
        self._black = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        self._types = av.video.frame.PictureType

    def write(self, frame) -> None:
        """Encode ``frame`` (an ``av.VideoFrame`` of the output size, any pixel format) as the
        next frame; its timestamps and picture type are replaced."""
        self._encode(frame, key=self._after_black)
        self._after_black = False

    def write_black(self) -> None:
        """Encode a black frame (every pixel 0 in RGB once decoded) as the next frame."""
        self._encode(self._black, key=not self._after_black)
        self._after_black = True

    def _encode(self, frame, *, key: bool) -> None:
        # Black predicted from a picture comes back with chroma a level off here and there
        # (RGB 1-2). A black run starts on a key frame and so does the picture after it, so
        # black is predicted from black only and decodes to RGB 0 exactly (measured up to
        # crf 30; coarser quantisers lift the key frame's luma, by up to RGB 2 to crf 51).
        # Any other picture type is x264's choice, not the one a decoded source frame carries.
        frame.pict_type = self._types.I if key else self._types.NONE
        frame.pts, frame.time_base = self.frames, self.time_base
        self._mux(self._stream.encode(frame))
        self.frames += 1

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(self._sei.filter(packet))

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._mux(self._stream.encode())
                self._container.mux(self._sei.filter(None))
        finally:
            self._container.close()


def _validated(spec: ProxySpec) -> ProxySpec:
    # model_copy(update=...) skips validation: a spec made that way is checked here, once
    # more, before it names or writes a proxy
    return ProxySpec.model_validate(dict(spec))


def _describe(path: Path) -> dict:
    from surgflow.data.video import probe

    info = probe(path)
    return {"fps": info.fps, "width": info.width, "height": info.height,
            "num_frames": info.num_frames}
