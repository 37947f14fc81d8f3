"""The embedded broker's lifecycle, and a clear error when no broker can be reached."""

from __future__ import annotations

import socket
import time

import pytest

from surgflow.feedback.checkpoint import Checkpoint
from surgflow.processes import free_port, pid_alive
from tests.cli_helpers import run_cli

pytestmark = pytest.mark.integration


def test_broker_start_status_stop(surgflow_home):
    try:
        started = run_cli("broker", "start", json=True).data
        assert started["running"] and started["started"]
        again = run_cli("broker", "start", json=True).data
        assert not again["started"] and again["pid"] == started["pid"]  # reused
        st = run_cli("broker", "status", json=True).data
        assert st["running"] and st["bootstrap"] == started["bootstrap"]
        host, port = st["bootstrap"].rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=2).close()
    finally:
        stopped = run_cli("broker", "stop", json=True).data
    assert stopped["stopped"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(started["pid"]):
        time.sleep(0.05)
    assert not pid_alive(started["pid"])
    assert not run_cli("broker", "status", json=True).data["running"]


def test_feedback_uses_the_embedded_broker_when_no_bootstrap_is_set(surgflow_home):
    try:
        report = run_cli("feedback", "run", "--once", json=True).data
        assert report["consumed"] == 0 and report["versions_created"] == []
        assert run_cli("broker", "status", json=True).data["running"]
    finally:
        run_cli("broker", "stop", json=True)


def test_unreachable_broker_fails_clearly_and_commits_nothing(surgflow_home, monkeypatch):
    port = free_port()  # nothing listens here once the probing socket is closed
    monkeypatch.setenv("SURGFLOW_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    t0 = time.monotonic()
    r = run_cli("feedback", "run", "--once", json=True, check=False)
    assert r.returncode == 1 and r.data is None
    assert f"127.0.0.1:{port}" in r.stderr and "unreachable after" in r.stderr
    assert "retrying" in r.stderr  # it backed off and tried again
    assert time.monotonic() - t0 < 60
    assert not (surgflow_home / "datasets").exists()
    assert not Checkpoint(surgflow_home).path.exists()


def test_retry_backs_off_exponentially_and_gives_up_with_a_broker_error(caplog):
    from surgflow.errors import BrokerError
    from surgflow.feedback.broker import retry

    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionRefusedError("refused")
        return "connected"

    with caplog.at_level("WARNING", logger="surgflow.feedback.broker"):
        assert retry("connecting", flaky, attempts=3) == "connected"
    assert [r.getMessage() for r in caplog.records] == [
        "connecting failed (attempt 1/3): refused; retrying in 0.2s",
        "connecting failed (attempt 2/3): refused; retrying in 0.4s",
    ]
    assert calls[2] - calls[0] >= 0.6

    calls.clear()
    with pytest.raises(BrokerError, match=r"^listing: broker unreachable after 2 attempts "
                                          r"\(refused\)$"):
        retry("listing", lambda: flaky() and None, attempts=2)
    assert len(calls) == 2

    def bug() -> None:
        calls.append(0.0)
        raise ValueError("not a connection problem")

    calls.clear()
    with pytest.raises(ValueError):  # only connection errors are retried
        retry("parsing", bug)
    assert len(calls) == 1
