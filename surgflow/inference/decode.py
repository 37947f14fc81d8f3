"""A video's per-second clips as uint8 batches, decoded in a thread ahead of the model.

The clips are exactly training's (:func:`surgflow.data.seconds.second_clips`): one per second,
centred on that second's frame, decoded by the same :class:`~surgflow.data.frames.ClipSource`
(decode at reduced size, centre crop), as numpy without torch. A batch's frames are decoded in
one forward pass (frames shared by overlapping clips once), then gathered into clips. The
thread runs at most ``prefetch`` batches ahead through a bounded queue, so memory is a few
batches whatever the video's length, while decoding overlaps the model's work (decord and
onnxruntime both release the GIL).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.frames import ClipSource, ClipVideo
from surgflow.data.seconds import second_clips
from surgflow.data.video import VideoInfo
from surgflow.errors import BadInput, VideoError

_END = object()


def per_second_clips(path: str | Path, info: VideoInfo, clip: ClipSpec) -> ClipSource:
    """The video's per-second clips, as training builds them; VideoError when it is shorter
    than one clip."""
    try:
        return second_clips(ClipVideo.of(path, info), clip)
    except BadInput as e:
        raise VideoError(str(path), str(e)) from e


class ClipStream:
    """``(first clip index, uint8 batch)`` of ``ds`` in order, decoded in a background thread.

    Use as a context manager: leaving it (normally, on an error or on a deadline) stops the
    thread. Decode failures are raised in the consumer as :class:`VideoError`."""

    def __init__(self, ds: ClipSource, path: str | Path, *, batch_size: int, prefetch: int = 2):
        self.ds, self.path, self.batch_size = ds, str(path), batch_size
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="surgflow-decode", daemon=True)
        self.decode_s = 0.0  # time the thread spent decoding

    def __enter__(self) -> ClipStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a thread waiting to put
                self._queue.get_nowait()
            self._thread.join(timeout=0.05)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        import time

        try:
            for first in range(0, len(self.ds), self.batch_size):
                if self._stop.is_set():
                    return
                t0 = time.perf_counter()
                batch = self.ds.batch(first, min(first + self.batch_size, len(self.ds)))
                self.decode_s += time.perf_counter() - t0
                if not self._put((first, batch)):
                    return
        except Exception as e:  # DecodeError, decord errors: the video cannot be read
            self._put(e)
            return
        self._put(_END)

    def next_batch(self, timeout: float | None = None) -> tuple[int, np.ndarray] | None:
        """The next batch in order, None after the last; waits at most ``timeout`` seconds
        (None: no limit), then raises ``queue.Empty``."""
        item = self._queue.get(timeout=timeout)
        if item is _END:
            return None
        if isinstance(item, Exception):
            reason = " ".join(str(item).split())[:300] or type(item).__name__
            raise VideoError(self.path, f"cannot be decoded: {reason}") from item
        return item
