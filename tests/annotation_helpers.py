"""Helpers of the Label Studio tests: the annotation bridge as a process, the annotations
topic, regions as Label Studio draws them."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

from surgflow.feedback import dlq
from surgflow.processes import free_port
from tests.cli_helpers import start_cli


def start_bridge(home: Path) -> tuple[subprocess.Popen, str]:
    """`surgflow annotate serve` on a free port, once it answers."""
    port = free_port()
    proc = start_cli("annotate", "serve", "--port", str(port), home=home,
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the bridge did not start: {proc.stderr.read()}")


def annotations_on_topic(kafka) -> list[dict]:
    return [json.loads(r.value) for r in dlq.read_all(kafka.bootstrap, kafka.topic("annotations"))]


def wait(check, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    return check()


def regions(drawn: list[tuple[int, int, str]]) -> list[dict]:
    """A ``phase`` timeline result: inclusive 1-based Label Studio frame ranges."""
    return [{"from_name": "phase", "to_name": "video", "type": "timelinelabels",
             "value": {"ranges": [{"start": a, "end": b}], "timelinelabels": [label]}}
            for a, b, label in drawn]
