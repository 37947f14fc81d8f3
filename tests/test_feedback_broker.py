"""The embedded broker's lifecycle, and a clear error when no broker can be reached."""

from __future__ import annotations

import socket
import time

import pytest

from surgflow.feedback.checkpoint import Checkpoint
from surgflow.processes import free_port, pid_alive
from tests.feedback_helpers import cli

pytestmark = pytest.mark.integration


def test_broker_start_status_stop(surgflow_home):
    try:
        _, started, _ = cli("broker", "start")
        assert started["running"] and started["started"]
        _, again, _ = cli("broker", "start")
        assert not again["started"] and again["pid"] == started["pid"]  # reused
        _, st, _ = cli("broker", "status")
        assert st["running"] and st["bootstrap"] == started["bootstrap"]
        host, port = st["bootstrap"].rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=2).close()
    finally:
        _, stopped, _ = cli("broker", "stop")
    assert stopped["stopped"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(started["pid"]):
        time.sleep(0.05)
    assert not pid_alive(started["pid"])
    assert not cli("broker", "status")[1]["running"]


def test_feedback_uses_the_embedded_broker_when_no_bootstrap_is_set(surgflow_home):
    try:
        _, report, _ = cli("feedback", "run", "--once")
        assert report["consumed"] == 0 and report["versions_created"] == []
        assert cli("broker", "status")[1]["running"]
    finally:
        cli("broker", "stop")


def test_unreachable_broker_fails_clearly_and_commits_nothing(surgflow_home, monkeypatch):
    port = free_port()  # nothing listens here once the probing socket is closed
    monkeypatch.setenv("SURGFLOW_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    t0 = time.monotonic()
    code, out, err = cli("feedback", "run", "--once", check=False)
    assert code == 1 and out is None
    assert f"127.0.0.1:{port}" in err and "unreachable after" in err
    assert "retrying" in err  # it backed off and tried again
    assert time.monotonic() - t0 < 60
    assert not (surgflow_home / "datasets").exists()
    assert not Checkpoint(surgflow_home).path.exists()
