"""The clip dataset: decoded, resized, normalised clips of a resolved view.

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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from surgflow.data.clip_sampling import ClipSpec, clip_frames, frame_step
from surgflow.data.proxies import Proxy, ProxySpec, ProxyStore
from surgflow.data.video import VideoInfo
from surgflow.errors import BadInput, DecodeError

if TYPE_CHECKING:
    from surgflow.data.datafiles import DatasetVideo

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

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


def to_tensor(
    frames: np.ndarray,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(T, H, W, C)`` uint8 to a ``(C, T, H, W)`` tensor: normalised floats of ``dtype``, or
    the raw uint8 values when ``dtype`` is ``torch.uint8`` (normalise later with
    :func:`normalise`, e.g. on the GPU, which moves a quarter of the bytes between processes)."""
    u = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    if dtype == torch.uint8:
        return u  # a view: collating into a batch makes the one copy that is needed
    out = torch.empty(u.shape, dtype=dtype)
    out.copy_(u)  # converts and transposes in one pass
    scale, shift = _affine(mean, std, dtype, out.device)
    return out.mul_(scale).add_(shift)


def normalise(
    clips: torch.Tensor,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    dtype: torch.dtype = torch.float32,
    channel_dim: int = -4,
) -> torch.Tensor:
    """uint8 clips to normalised floats, on the clips' device. Channels are at ``channel_dim``:
    -4 for clips ``(..., C, T, H, W)``, -3 for frames ``(..., C, H, W)``."""
    scale, shift = _affine(mean, std, dtype, clips.device)
    shape = (-1,) + (1,) * (-channel_dim - 1)
    return clips.to(dtype).mul_(scale.view(shape)).add_(shift.view(shape))


def _affine(mean: Sequence[float], std: Sequence[float], dtype: torch.dtype, device):
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).view(-1, 1, 1, 1).to(dtype=dtype, device=device)
    shift = (-m / s).view(-1, 1, 1, 1).to(dtype=dtype, device=device)
    return scale, shift


class ClipDataset(Dataset):
    """Clip ``i`` of video ``videos[video[i]]`` starting at frame ``start[i]``, label ``label[i]``.

    Items are dicts: ``clip`` (``(C, T, H, W)``, or ``(C, H, W)`` with ``frame_level``;
    normalised floats of ``dtype``, or raw uint8 with ``dtype=torch.uint8``), ``label`` (int),
    ``video_id``, ``start_frame``, ``end_frame`` (one past the last frame read), ``index``.
    Works with any sampler and with ``num_workers > 0``.
    """

    def __init__(
        self,
        videos: Sequence[ClipVideo],
        video: Sequence[int] | np.ndarray,
        start: Sequence[int] | np.ndarray,
        label: Sequence[int] | np.ndarray,
        spec: ClipSpec,
        *,
        frame_level: bool = False,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        dtype: torch.dtype = torch.float32,
        reader: FrameReader | None = None,
    ):
        self.videos = list(videos)
        self.video = np.asarray(video, dtype=np.int64)
        self.start = np.asarray(start, dtype=np.int64)
        self.label = np.asarray(label, dtype=np.int64)
        if not len(self.video) == len(self.start) == len(self.label):
            raise BadInput("video, start and label must have one entry per clip")
        if frame_level and spec.frames != 1:
            raise BadInput(f"frame_level needs a clip spec of 1 frame, got {spec.frames}")
        self.spec, self.frame_level = spec, frame_level
        self.mean, self.std, self.dtype = tuple(mean), tuple(std), dtype
        self.steps = [frame_step(v.fps, spec.fps) for v in self.videos]
        self.reader = reader or FrameReader()

    @classmethod
    def from_view(cls, view, *, proxies: ProxyStore | None = None, make_proxies: bool = False,
                  **kwargs) -> ClipDataset:
        """A dataset over a :class:`~surgflow.data.views.ResolvedView`'s clips.

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

    def frames_of(self, i: int) -> np.ndarray:
        v = int(self.video[i])
        return clip_frames(int(self.start[i]), self.spec, self.steps[v])

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range (dataset has {len(self)} clips)")
        video = self.videos[int(self.video[i])]
        numbers = self.frames_of(i)
        frames = self.reader.frames(video, numbers, self.spec.size)
        clip = to_tensor(frames, self.mean, self.std, self.dtype)
        if self.frame_level:
            clip = clip[:, 0]
        return {"clip": clip, "label": int(self.label[i]), "video_id": video.video_id,
                "start_frame": int(numbers[0]), "end_frame": int(numbers[-1]) + 1, "index": i}


def iter_video(
    video: ClipVideo,
    *,
    fps: float | None,
    size: int,
    batch_frames: int = 64,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    reader: FrameReader | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """A whole video in order at ``fps``: ``(frame numbers, (N, C, H, W) tensor)`` batches.

    For per-second features pass ``fps=1``: frames ``0, step, 2*step, ...`` with ``step =
    round(video fps)``, read from the video's proxy when it has one for that rate.
    """
    reader = reader or FrameReader(max_open=1)
    step = frame_step(video.fps, fps)
    numbers = np.arange(0, video.num_frames, step, dtype=np.int64)
    for k in range(0, len(numbers), batch_frames):
        chunk = numbers[k : k + batch_frames]
        x = to_tensor(reader.frames(video, chunk, size), mean, std)  # (C, N, H, W)
        yield chunk, x.permute(1, 0, 2, 3).contiguous()
