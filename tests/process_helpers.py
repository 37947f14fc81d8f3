"""Helpers for tests that run surgflow as a user would: a clean environment, and the processes
left behind under one SURGFLOW_HOME."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil

SERVICE_VARS = ("SURGFLOW_", "PREFECT_", "MLFLOW_")


def clean_env(home: Path, also_drop: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment without anything pointing at services or state of its own,
    with ``SURGFLOW_HOME`` set to ``home``."""
    drop = SERVICE_VARS + also_drop
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | {
        "SURGFLOW_HOME": str(home)}


def processes_of(home: Path) -> list[psutil.Process]:
    """Live processes (other than this one) started with this SURGFLOW_HOME in their
    environment: what a command that starts services must not leave behind."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("SURGFLOW_HOME") == str(home):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_processes_of(home: Path, timeout: float = 10.0) -> list[psutil.Process]:
    """Terminate (then kill) what :func:`processes_of` finds, so that a test that failed or
    timed out does not leave services running; the processes it found."""
    found = processes_of(home)
    for p in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(found, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return found
