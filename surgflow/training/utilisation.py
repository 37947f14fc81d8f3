"""Machine utilisation sampled on every rank while it trains.

A background thread samples this process's CPU % and resident memory, the time the training
loop spent waiting for the data loader since the last sample, and, when a GPU is in use, its
utilisation and memory through NVML. Samples are plain dicts with a wall-clock time so they
line up with the epoch metrics on one time axis; each is handed to ``on_sample`` (the rank's
live MLflow log) or, without one, kept until :meth:`UtilisationSampler.drain`.

The GPU is looked up in NVML by its UUID, not its CUDA ordinal: CUDA numbers devices in its own
order (fastest first, and after ``CUDA_VISIBLE_DEVICES`` remapping), which need not be NVML's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class UtilisationSampler:
    """Sample every ``interval_s`` seconds on a daemon thread between ``start`` and ``stop``."""

    def __init__(self, rank: int, interval_s: float = 1.0, gpu_index: int | None = None,
                 on_sample: Callable[[dict[str, Any]], None] | None = None):
        self.rank, self.interval_s, self.gpu_index = rank, interval_s, gpu_index
        self.on_sample = on_sample
        self._samples: list[dict[str, Any]] = []
        self._wait = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None

    def add_wait(self, seconds: float) -> None:
        """Called by the training loop with each data-loader wait."""
        with self._lock:
            self._wait += seconds

    def start(self) -> UtilisationSampler:
        import psutil

        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # the first reading is always 0; prime it
        if self.gpu_index is not None:
            self._nvml = _nvml_handle(self.gpu_index)
        self._thread = threading.Thread(target=self._run, name=f"util-rank{self.rank}",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> dict[str, Any]:
        with self._lock:
            wait, self._wait = self._wait, 0.0
        s: dict[str, Any] = {
            "t": time.time(),
            "rank": self.rank,
            "cpu_percent": self._proc.cpu_percent(None),
            "rss_mb": self._proc.memory_info().rss / 2**20,
            "loader_wait_s": wait,
            "gpu_util_percent": None,
            "gpu_mem_mb": None,
        }
        if self._nvml is not None:
            import pynvml

            util = pynvml.nvmlDeviceGetUtilizationRates(self._nvml)
            mem = pynvml.nvmlDeviceGetMemoryInfo(self._nvml)
            s["gpu_util_percent"], s["gpu_mem_mb"] = float(util.gpu), mem.used / 2**20
        if self.on_sample is not None:
            self.on_sample(s)
        else:
            with self._lock:
                self._samples.append(s)
        return s

    def drain(self) -> list[dict[str, Any]]:
        """The samples taken since the last drain."""
        with self._lock:
            out, self._samples = self._samples, []
        return out

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.drain()


def cuda_uuid(index: int) -> str:
    """NVML's name of CUDA device ``index``: ``GPU-<uuid>`` (``MIG-<uuid>`` for a MIG slice
    already carries its prefix)."""
    import torch

    uuid = str(torch.cuda.get_device_properties(index).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def _nvml_handle(index: int) -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByUUID(cuda_uuid(index))
    except Exception:  # no driver, or a device NVML does not know: no GPU fields
        return None
