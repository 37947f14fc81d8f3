"""Local process and port helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from surgflow.processes import free_port, pid_alive, terminate

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_terminate_stops_a_process_and_kills_one_that_ignores_sigterm() -> None:
    polite = subprocess.Popen(SLEEP)
    stubborn = subprocess.Popen([
        sys.executable, "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)",
    ], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline().strip() == "ready"
    assert pid_alive(polite.pid) and pid_alive(stubborn.pid)
    assert terminate(polite.pid, 10) and not pid_alive(polite.pid)
    assert terminate(stubborn.pid, 0.3) and not pid_alive(stubborn.pid)
    assert not terminate(stubborn.pid, 1), "a process already gone is reported as not alive"
    assert not pid_alive(0) and not pid_alive(-1)


def test_a_pid_running_another_program_is_left_alone() -> None:
    other = subprocess.Popen(SLEEP)
    try:
        assert not terminate(other.pid, 1, program="tansu")
        assert pid_alive(other.pid) and other.poll() is None
        assert terminate(other.pid, 10, program="time.sleep")
        assert not pid_alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_group_termination_ends_the_children_a_service_started() -> None:
    """A service in its own session whose child ignores SIGTERM: both end, the child killed."""
    leader = subprocess.Popen([
        sys.executable, "-c",
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)'],"
        " stdout=subprocess.PIPE, text=True)\n"
        "child.stdout.readline()\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n",
    ], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(leader.stdout.readline())
    assert pid_alive(child) and os.getpgid(child) == leader.pid
    t0 = time.monotonic()
    assert terminate(leader.pid, 1.0, program=sys.executable, group=True)
    assert not pid_alive(leader.pid) and not pid_alive(child)
    assert time.monotonic() - t0 < 10


def test_a_zombie_child_is_reaped_and_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not pid_alive(proc.pid)
    with pytest.raises(ChildProcessError):  # pid_alive reaped it
        os.waitpid(proc.pid, os.WNOHANG)
    assert not terminate(proc.pid, 1)
