"""Local process and port helpers shared by the services surgflow starts itself (the embedded
broker, the local Prefect server) and by the DDP launcher."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (``""``: on every interface of this host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists; a zombie child of this process is reaped and is not."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def runs(pid: int, program: bytes) -> bool:
    """Whether live process ``pid``'s command line mentions ``program``: a guard against
    signalling an unrelated process that reused a recorded pid (assumed true off Linux)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return sys.platform != "linux" and pid_alive(pid)
    return program in cmdline


def terminate(pid: int, timeout_s: float, program: bytes | None = None,
              group: bool = False) -> bool:
    """SIGTERM ``pid``, SIGKILL it if still alive after ``timeout_s``; True if it was alive.

    With ``program``, a pid whose command line does not mention it is left alone (False).
    With ``group``, the signals go to the process group ``pid`` leads (a service started in
    its own session), so the children it started go with it."""
    if not pid_alive(pid) or (program is not None and not runs(pid, program)):
        return False
    send = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout_s):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)
    if group:  # children that outlived their leader's clean exit
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return True


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
