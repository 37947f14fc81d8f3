"""Local process and port helpers."""

from __future__ import annotations

import socket
import subprocess
import sys

from surgflow.processes import free_port, pid_alive, terminate


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_terminate_stops_a_process_and_kills_one_that_ignores_sigterm() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
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
