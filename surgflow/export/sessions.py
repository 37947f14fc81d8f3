"""onnxruntime sessions for a bundle's graphs: one place that picks providers and options.

Options (measured with ``python -m bench.inference``; see its docstring for the figures):
full graph optimisation (``ORT_ENABLE_ALL``: conv + batch-norm + relu fusions, constant
folding), sequential execution (the graphs are single chains of convolutions, so parallel
execution only adds scheduling) and intra-op threads = the CPU cores this process may use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def cpu_threads() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_providers() -> list[str]:
    """CUDA first where a CUDA device is visible and onnxruntime was built with it, else CPU.

    onnxruntime-gpu lists the CUDA provider even on a machine without a GPU, so a device is
    looked for too."""
    import onnxruntime as ort

    if CUDA in ort.get_available_providers() and _cuda_device():
        return [CUDA, CPU]
    return [CPU]


def _cuda_device() -> bool:
    """Whether the CUDA driver sees a device (``CUDA_VISIBLE_DEVICES`` applies), asked of the
    driver library itself: ``torch.cuda.is_available()`` makes the same two calls, but the
    runner and the service would pay seconds of torch import for them."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return False  # no NVIDIA driver on this machine
    count = ctypes.c_int(0)
    try:
        return (driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0
                and count.value > 0)
    except Exception:  # a driver library without these entry points
        return False


def session_options(intra_op_threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads or cpu_threads()
    opts.inter_op_num_threads = 1
    # Idle intra-op threads would spin for work, taking the cores the decode thread needs
    # while the runner overlaps decoding with the encoder (measured in bench.serving).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # warnings about unused initialisers are noise here
    return opts


def make_session(path: str | Path, *, providers: Sequence[str] | None = None,
                 intra_op_threads: int | None = None) -> Any:
    """An ``InferenceSession`` on ``path`` with surgflow's options."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=session_options(intra_op_threads),
                                providers=list(providers or default_providers()))
