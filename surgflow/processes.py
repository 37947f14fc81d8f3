"""Local process and port helpers shared by the services surgflow starts itself (the embedded
broker, the local Prefect server), the local stack and the DDP launcher."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import psutil


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (``""``: on every interface of this host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _alive(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs; a zombie is not, and is reaped if it is this process's
    child (``is_running`` also notices when the pid now belongs to a newer process)."""
    try:
        if not proc.is_running():
            return False
        if proc.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    with contextlib.suppress(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)
    return False


def _process(pid: int) -> psutil.Process | None:
    """The live process ``pid``, or None."""
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    return proc if _alive(proc) else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie does not (and is reaped if it is our child)."""
    return _process(pid) is not None


def _runs(proc: psutil.Process, program: str) -> bool:
    """Whether ``proc``'s command line mentions ``program``: a guard against signalling an
    unrelated process that reused a recorded pid. An unreadable command line is not ours.

    A process that ``subprocess.Popen`` has just started can show an empty command line for a
    moment (seen here in about 1 of 25 tries), so an empty one is read again for up to a
    second."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            parts = proc.cmdline()
        except psutil.Error:
            return False
        if parts or time.monotonic() >= deadline:
            return any(program in part for part in parts)
        time.sleep(0.01)


def _group(leader: psutil.Process) -> list[psutil.Process]:
    """``leader`` and those of its descendants in the process group it leads."""
    members = [leader]
    with contextlib.suppress(psutil.Error):
        for child in leader.children(recursive=True):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(child.pid) == leader.pid:
                    members.append(child)
    return members


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait up to ``timeout_s`` for ``procs`` to end; the ones still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        procs = [p for p in procs if _alive(p)]
        if not procs or time.monotonic() >= deadline:
            return procs
        time.sleep(0.05)


def terminate(pid: int, timeout_s: float, program: str | None = None,
              group: bool = False) -> bool:
    """SIGTERM ``pid``, SIGKILL it if still alive after ``timeout_s``; True if it was alive.

    With ``program``, a pid whose command line does not mention it is left alone (False).
    With ``group``, the signals go to the process group ``pid`` leads (a service started in
    its own session), so the children it started go with it."""
    leader = _process(pid)
    if leader is None or (program is not None and not _runs(leader, program)):
        return False
    procs = _group(leader) if group else [leader]

    def send(sig: signal.Signals, targets: list[psutil.Process]) -> None:
        if group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        for p in targets:  # in the group, or all there is without one
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)

    send(signal.SIGTERM, [] if group else procs)
    survivors = _wait_gone(procs, timeout_s)
    # members that started after the listing, or outlived their leader's clean exit, go too
    if survivors or group:
        send(signal.SIGKILL, survivors)
        _wait_gone(survivors, 5.0)
    return True
