"""Background services that surgflow starts itself and later commands reuse: the embedded Kafka
broker (:mod:`surgflow.feedback.broker`) and the local Prefect server
(:mod:`surgflow.cli.local.prefect_server`).

A service runs detached in its own session, so it outlives the command that started it and
stopping its process group ends the children it started too; its output is appended to a log
file. Where it runs is recorded in a JSON state file, read and written under a lock so that two
commands starting at once share one service. A recorded service is reused while its process
lives and it answers; a recorded pid that now belongs to another program is never signalled.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from surgflow.errors import SurgflowError
from surgflow.processes import pid_alive, terminate
from surgflow.storage import json_bytes, locked, read_json, write_atomic

Record = dict[str, Any]


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen:
    """Start ``cmd`` detached in its own session, its output appended to ``log_path``."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def wait_ready(pid: int, ready: Callable[[], bool], *, name: str, where: str, log_path: Path,
               timeout_s: float, poll_s: float = 0.2,
               error: type[SurgflowError] = SurgflowError) -> None:
    """Wait until ``ready()`` while process ``pid`` (just started) runs; raise ``error`` naming
    ``log_path`` if it exits first or is not ready within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        code = _exit_code(pid)
        if code is not False:
            with_code = "" if code is None else f" with code {code}"
            raise error(f"{name} exited{with_code} on start; see {log_path}")
        if time.monotonic() >= deadline:
            raise error(f"{name} did not answer at {where} within {timeout_s:.0f} s; "
                        f"see {log_path}")
        time.sleep(poll_s)


def _exit_code(pid: int) -> int | Literal[False] | None:
    """False while ``pid`` runs; once it ended, its exit code (reaped if it is our child;
    None if unknown)."""
    try:
        return psutil.Process(pid).wait(timeout=0)
    except psutil.TimeoutExpired:
        return False if pid_alive(pid) else None
    except psutil.NoSuchProcess:
        return None


def start(cmd: list[str], log_path: Path, ready: Callable[[], bool], *, name: str, where: str,
          timeout_s: float, poll_s: float = 0.2, env: dict[str, str] | None = None,
          error: type[SurgflowError] = SurgflowError) -> subprocess.Popen:
    """:func:`spawn` ``cmd`` and :func:`wait_ready`; one not ready in time is stopped."""
    proc = spawn(cmd, log_path, env)
    try:
        wait_ready(proc.pid, ready, name=name, where=where, log_path=log_path,
                   timeout_s=timeout_s, poll_s=poll_s, error=error)
    except BaseException:
        terminate(proc.pid, 5.0, group=True)
        raise
    return proc


@dataclass(frozen=True)
class Launch:
    """How to start one instance of a service: its command and environment, where it will
    answer, and what to record about it besides its pid."""

    cmd: list[str]
    where: str
    record: Record
    env: dict[str, str] | None = None


@dataclass(frozen=True)
class Supervisor:
    """One background service recorded under ``state_path``."""

    name: str
    state_path: Path
    lock_path: Path
    log_path: Path
    #: a word of its command line, checked before signalling a recorded pid
    program: str
    #: whether the service a record describes answers (while starting, before its pid is in
    #: the record)
    healthy: Callable[[Record], bool]
    start_timeout_s: float
    poll_s: float = 0.2
    error: type[SurgflowError] = SurgflowError

    def recorded(self) -> Record | None:
        """What the state file records (alive or not); None if none or unreadable."""
        data = read_json(self.state_path)
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            return None
        return data

    def running(self, wait_s: float = 0.0) -> Record | None:
        """The recorded service if its process lives and it answers, else None. A busy machine
        may make a live one slow to answer: it is given ``wait_s`` while its process lives."""
        record = self.recorded()
        if record is None:
            return None
        deadline = time.monotonic() + wait_s
        while pid_alive(record["pid"]):
            if self.healthy(record):
                return record
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.poll_s)
        return None

    def ensure(self, launch: Callable[[], Launch], reuse_wait_s: float = 0.0
               ) -> tuple[Record, bool]:
        """The running service, started from ``launch()`` unless one is recorded and answers
        (within ``reuse_wait_s``); returns ``(record, started)``."""
        with locked(self.lock_path):
            record = self.running(reuse_wait_s)
            if record is not None:
                return record, False
            how = launch()
            record = dict(how.record)
            proc = start(how.cmd, self.log_path, lambda: self.healthy(record), name=self.name,
                         where=how.where, timeout_s=self.start_timeout_s, poll_s=self.poll_s,
                         env=how.env, error=self.error)
            record["pid"] = proc.pid
            write_atomic(self.state_path, json_bytes(record))
            return record, True

    def stop(self, timeout_s: float) -> Record | None:
        """Stop the recorded service and its process group and forget it; returns its record
        if it was running (None if nothing was, or the pid now belongs to another program)."""
        with locked(self.lock_path):
            record = self.recorded()
            self.state_path.unlink(missing_ok=True)
            if record is not None and terminate(record["pid"], timeout_s,
                                                program=self.program, group=True):
                return record
            return None
