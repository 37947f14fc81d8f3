"""Local process and port helpers, and the supervisor of background services."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from surgflow.errors import BrokerError, SurgflowError
from surgflow.processes import free_port, pid_alive, terminate
from surgflow.services import Launch, Supervisor

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


def _answers(record: dict) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{record['port']}/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _http_server(home: Path, **kw) -> Supervisor:
    return Supervisor("test server", home / "server.json", home / "server.lock",
                      home / "server.log", program="http.server", healthy=_answers,
                      start_timeout_s=kw.pop("start_timeout_s", 30.0), poll_s=0.05, **kw)


def _launch_http(tmp: Path, cmd: list[str] | None = None):
    def launch() -> Launch:
        port = free_port()
        return Launch(cmd or [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                              "--directory", str(tmp), str(port)],
                      f"127.0.0.1:{port}", {"port": port})
    return launch


def test_a_service_is_started_once_reused_and_stopped(tmp_path: Path) -> None:
    svc = _http_server(tmp_path)
    svc.state_path.write_text('{"pid": 12')  # a torn write is no record
    assert svc.running() is None
    first, started = svc.ensure(_launch_http(tmp_path))
    try:
        assert started and _answers(first) and svc.recorded() == first
        assert os.getpgid(first["pid"]) == first["pid"], "it runs in its own session"
        again, started_again = svc.ensure(_launch_http(tmp_path))
        assert again == first and not started_again
        assert svc.running() == first
        assert "GET / HTTP" in svc.log_path.read_text(), "its output goes to the log"
    finally:
        stopped = svc.stop(10)
    assert stopped == first and not pid_alive(first["pid"])
    assert not svc.state_path.exists() and svc.running() is None
    assert svc.stop(10) is None


def test_a_recorded_pid_reused_by_another_program_is_not_signalled(tmp_path: Path) -> None:
    svc = _http_server(tmp_path)
    other = subprocess.Popen(SLEEP)
    try:
        svc.state_path.write_text(f'{{"pid": {other.pid}, "port": {free_port()}}}')
        assert svc.running() is None  # alive, but not answering: not the service
        record, started = svc.ensure(_launch_http(tmp_path))
        assert started and record["pid"] != other.pid
        svc.stop(10)
        svc.state_path.write_text(f'{{"pid": {other.pid}, "port": 1}}')
        assert svc.stop(1) is None and pid_alive(other.pid)
        assert not svc.state_path.exists()
    finally:
        other.kill()
        other.wait()


def test_a_service_that_fails_to_start_names_its_log(tmp_path: Path) -> None:
    svc = _http_server(tmp_path, error=BrokerError)
    crash = [sys.executable, "-c", "import sys; print('no such option'); sys.exit(3)"]
    with pytest.raises(BrokerError, match=r"test server exited with code 3 on start; see .*"
                                          r"server\.log"):
        svc.ensure(_launch_http(tmp_path, crash))
    assert "no such option" in svc.log_path.read_text()
    assert svc.recorded() is None

    mute = _http_server(tmp_path, start_timeout_s=1.0)
    with pytest.raises(SurgflowError, match=r"test server did not answer at 127\.0\.0\.1:\d+ "
                                            r"within 1 s; see .*server\.log"):
        mute.ensure(_launch_http(tmp_path, SLEEP))
    assert not _running(SLEEP), "the silent one was stopped"


def _running(cmd: list[str]) -> list[psutil.Process]:
    found = []
    for p in psutil.Process().children():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.cmdline() == cmd:
                found.append(p)
        except psutil.Error:
            pass
    return found
