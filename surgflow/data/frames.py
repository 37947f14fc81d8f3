"""Decoding clips to raw uint8 frames, the one decoding path of training and inference.

:class:`ClipSource` is a set of clips (video, start frame, label) that decodes clip ``i`` to its
``T×S×S×3`` uint8 frames, or a batch of clips to ``B×3×T×S×S`` with each distinct frame decoded
once; :class:`~surgflow.data.clips.ClipDataset` is the torch dataset over it (tensors,
normalisation) and the ONNX runner reads it as it is. Nothing here imports torch.

Readers: a decord ``VideoReader`` created before a fork hangs or crashes the forked DataLoader
worker, so readers are opened lazily in the process that decodes, kept in a per-process cache (a
reader reused for the next clip of its video decodes forward instead of seeking), and use one
thread each. The cache holds one reader by default: every open decord reader keeps a decoder
thread that slows the others down (measured here: clips read alternately from 2 open readers
cost 2.6x, from 4 readers 4.7x, what they cost from one), while reopening costs ~3 ms, so a
worker reads one video at a time (the chunked-shuffle sampler arranges for that). A dataset
copied into another process drops the cache it inherited.

Memory is bounded by the clip: only the clip's frames are decoded, at reduced size by decord's
scaler, then centre-cropped to ``size`` x ``size``. Frames come from a proxy of the video
(``surgflow.data.proxies``) when one serves the clip's frames at the wanted size, otherwise from
the original.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from surgflow.data.clip_sampling import ClipSpec, clip_frames, frame_step
from surgflow.data.proxies import Proxy, ProxySpec, ProxyStore
from surgflow.data.video import VideoInfo
from surgflow.errors import BadInput, DecodeError

if TYPE_CHECKING:
    from surgflow.data.datafiles import DatasetVideo

# Readers inherited through a fork must never be used nor destroyed in the child (decord's
# destructor can hang there too); they are parked here for the life of the process.
_INHERITED: list = []


class ClipVideo(VideoInfo):
    """A video the dataset reads: its id (named in errors and items), the original file and
    what probing it found, and the proxy that may stand in for it."""

    video_id: str
    path: str
    proxy: Proxy | None = None

    @classmethod
    def of(cls, path: str | Path, info: VideoInfo | DatasetVideo, video_id: str | None = None,
           proxy: Proxy | None = None) -> ClipVideo:
        """The file at ``path`` as ``info`` describes it (a probe's result, a record that
        extends one, or a dataset's snapshot of a record); ``video_id`` defaults to the file
        name without its extension."""
        facts = {k: getattr(info, k) for k in VideoInfo.model_fields}
        return cls(video_id=video_id or Path(path).stem, path=str(path), proxy=proxy, **facts)


def decode_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(w, h)`` to decode at so the short side is ``short_side``, aspect kept."""
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


class FrameReader:
    """Decodes frames of videos with cached per-process readers, retrying failures.

    ``frames(video, numbers, size)`` returns ``(len(numbers), size, size, 3)`` uint8 frames
    (source frame numbers; mapped onto the proxy when it serves them).
    """

    def __init__(self, max_open: int = 1, retries: int = 2):
        if max_open < 1 or retries < 0:
            raise BadInput("max_open must be >= 1 and retries >= 0")
        self.max_open, self.retries = max_open, retries
        self._pid = os.getpid()
        self._readers: OrderedDict[tuple, object] = OrderedDict()
        self._scale_in_torch: set[tuple] = set()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_readers"] = OrderedDict()
        return state

    def _reader(self, path: str, width: int, height: int):
        if self._pid != os.getpid():
            _INHERITED.append(self._readers)
            self._readers, self._pid = OrderedDict(), os.getpid()
        key = (path, width, height)
        vr = self._readers.get(key)
        if vr is None:
            import decord

            vr = decord.VideoReader(path, width=width, height=height, num_threads=1)
            self._readers[key] = vr
            while len(self._readers) > self.max_open:
                self._readers.popitem(last=False)
        self._readers.move_to_end(key)
        return vr

    def _drop(self, path: str, width: int, height: int) -> None:
        self._readers.pop((path, width, height), None)

    def source_for(
        self, video: ClipVideo, numbers: np.ndarray, size: int
    ) -> tuple[str, np.ndarray, int, int]:
        """``(path, frame numbers in that file, decode width, decode height)``."""
        p = video.proxy
        if p is not None and p.serves(numbers, size):
            w, h = decode_size(p.width, p.height, size)
            return p.path, numbers // p.spec.step, *self._native(w, h, p.width, p.height)
        w, h = decode_size(video.width, video.height, size)
        return video.path, numbers, *self._native(w, h, video.width, video.height)

    @staticmethod
    def _native(w: int, h: int, width: int, height: int) -> tuple[int, int]:
        return (-1, -1) if (w, h) == (width, height) else (w, h)

    def frames(self, video: ClipVideo, numbers: Sequence[int], size: int) -> np.ndarray:
        numbers = np.asarray(numbers, dtype=np.int64)
        path, local, w, h = self.source_for(video, numbers, size)
        error: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                return centre_crop(self._read(path, local, w, h), size)
            except Exception as e:  # decord raises DECORDError, RuntimeError, IndexError
                error = e
                self._drop(path, w, h)
        bad = self._first_bad(path, w, h, local)
        frame = int(numbers[bad]) if bad is not None else int(numbers[0])
        where = f" (proxy {path})" if path != video.path else ""
        raise DecodeError(
            f"video {video.video_id!r} ({video.path}){where}: cannot decode frame {frame} of clip "
            f"frames {int(numbers[0])}..{int(numbers[-1])} after {self.retries + 1} attempts: "
            f"{' '.join(str(error).split())[:200] or type(error).__name__}"
        ) from error

    def _read(self, path: str, local: np.ndarray, w: int, h: int) -> np.ndarray:
        if (w, h) == (-1, -1) or (path, w, h) not in self._scale_in_torch:
            try:
                return self._reader(path, w, h).get_batch(local.tolist()).asnumpy()
            except Exception as e:
                # decord's scaler writes a wrongly sized frame for some widths (16, 24, 48,
                # 72, ...); those sizes are decoded at full size and scaled by torch instead.
                if "DECORDArrayCopyFromTo" not in str(e):
                    raise
                self._drop(path, w, h)
                self._scale_in_torch.add((path, w, h))
        import torch  # only for the few widths decord cannot scale to

        full = torch.from_numpy(self._reader(path, -1, -1).get_batch(local.tolist()).asnumpy())
        x = torch.nn.functional.interpolate(
            full.permute(0, 3, 1, 2).float(), size=(h, w), mode="bilinear", antialias=True,
            align_corners=False,
        )
        return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def _first_bad(self, path: str, w: int, h: int, local: np.ndarray) -> int | None:
        """Position of the first frame that does not decode on its own, if any."""
        try:
            import decord

            vr = decord.VideoReader(path, width=w, height=h, num_threads=1)
        except Exception:
            return 0
        for i, f in enumerate(local.tolist()):
            try:
                vr[f].asnumpy()
            except Exception:
                return i
        return None


def centre_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window of ``(N, H, W, C)`` frames."""
    h, w = frames.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top : top + size, left : left + size]


class ClipSource:
    """Clip ``i`` of video ``videos[video[i]]`` starting at frame ``start[i]``, label ``label[i]``,
    decoded to raw uint8 frames by ``reader``."""

    def __init__(
        self,
        videos: Sequence[ClipVideo],
        video: Sequence[int] | np.ndarray,
        start: Sequence[int] | np.ndarray,
        label: Sequence[int] | np.ndarray,
        spec: ClipSpec,
        *,
        reader: FrameReader | None = None,
    ):
        self.videos = list(videos)
        self.video = np.asarray(video, dtype=np.int64)
        self.start = np.asarray(start, dtype=np.int64)
        self.label = np.asarray(label, dtype=np.int64)
        if not len(self.video) == len(self.start) == len(self.label):
            raise BadInput("video, start and label must have one entry per clip")
        self.spec = spec
        self.steps = [frame_step(v.fps, spec.fps) for v in self.videos]
        self.reader = reader or FrameReader()

    @classmethod
    def from_view(cls, view, *, proxies: ProxyStore | None = None, make_proxies: bool = False,
                  **kwargs: Any) -> Self:
        """The clips of a :class:`~surgflow.data.views.ResolvedView`.

        With ``proxies``, each video uses its proxy for the view's clip spec when one exists;
        ``make_proxies`` writes missing ones first (once; later runs find them).
        """
        spec = view.spec.clip
        videos = []
        for v in view.videos:
            proxy = None
            if proxies is not None:
                pspec = ProxySpec.for_clip(spec, v.fps)
                proxy = (proxies.ensure(v.path, v.sha256, pspec) if make_proxies
                         else proxies.find(v.sha256, pspec))
            videos.append(ClipVideo.of(v.path, v, v.video_id, proxy))
        return cls(videos, view.video, view.start, view.label, spec, **kwargs)

    def __len__(self) -> int:
        return len(self.start)

    def _index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range ({len(self)} clips)")
        return i

    def frames_of(self, i: int) -> np.ndarray:
        """Source frame numbers clip ``i`` reads, in order."""
        v = int(self.video[i])
        return clip_frames(int(self.start[i]), self.spec, self.steps[v])

    def read(self, i: int) -> np.ndarray:
        """Clip ``i``'s frames, ``T×S×S×3`` uint8."""
        i = self._index(i)
        return self.reader.frames(self.videos[int(self.video[i])], self.frames_of(i),
                                  self.spec.size)

    def batch(self, first: int, stop: int) -> np.ndarray:
        """Clips ``first..stop-1`` as uint8 ``B×3×T×S×S`` (what stacking :meth:`read`'s clips,
        channels first, gives), each distinct frame of a video decoded once."""
        self._index(first)
        self._index(stop - 1)
        b, t, s = stop - first, self.spec.frames, self.spec.size
        which = self.video[first:stop]
        if (which == which[0]).all():  # one video, as a per-second stream always is
            return _channels_first(self._decode(int(which[0]), range(first, stop)))
        out = np.empty((b, t, s, s, 3), dtype=np.uint8)
        for v in np.unique(which):
            mine = first + np.flatnonzero(which == v)
            out[mine - first] = self._decode(int(v), mine)
        return _channels_first(out)

    def _decode(self, v: int, clips: Sequence[int] | np.ndarray) -> np.ndarray:
        numbers = np.concatenate([self.frames_of(i) for i in clips])
        unique, where = np.unique(numbers, return_inverse=True)
        frames = self.reader.frames(self.videos[v], unique, self.spec.size)  # U×S×S×3
        t, s = self.spec.frames, self.spec.size
        return frames[where.reshape(-1)].reshape(len(clips), t, s, s, 3)


def _channels_first(clips: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3))
