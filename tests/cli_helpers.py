"""Running ``surgflow`` as a user would: the entry point of the environment running the tests, in
a child process, with this process's environment (or a clean one) plus what the test sets."""

from __future__ import annotations

import json as _json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.process_helpers import clean_env

#: the ``surgflow`` entry point installed beside this interpreter, wherever that is
SURGFLOW = str(Path(sys.executable).with_name("surgflow"))


@dataclass(frozen=True)
class CliRun:
    """What one command did: its exit code and output, and its stdout parsed with ``json``."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def data(self) -> Any:
        """The JSON document on stdout (None for an empty stdout); exactly one document."""
        return _json.loads(self.stdout) if self.stdout.strip() else None


def cli_env(home: Path | None = None, env: Mapping[str, str] | None = None, *,
            clean: bool = False, unset: Iterable[str] = ()) -> dict[str, str]:
    """The child's environment: this process's (or, with ``clean``, one without anything that
    points at services or state, see :func:`~tests.process_helpers.clean_env`), ``home`` as
    ``SURGFLOW_HOME``, then ``env``, less the names in ``unset``."""
    if clean:
        if home is None:
            raise ValueError("a clean environment needs a home")
        base = clean_env(Path(home))
    else:
        base = dict(os.environ)
        if home is not None:
            base["SURGFLOW_HOME"] = str(home)
    base |= dict(env or {})
    for name in unset:
        base.pop(name, None)
    return base


def cli_command(*args: str, json: bool = False) -> list[str]:
    return [SURGFLOW, *args, *(["--json"] if json else [])]


def run_cli(*args: str, home: Path | None = None, env: Mapping[str, str] | None = None,
            json: bool = False, check: bool = True, clean: bool = False,
            unset: Iterable[str] = (), cwd: Path | None = None,
            timeout: float = 300) -> CliRun:
    """Run ``surgflow ARGS`` (``--json`` appended with ``json``) and wait for it.

    With ``check`` (the default) a non-zero exit fails the test with the command's stderr; a
    test that expects a failure passes ``check=False`` and asserts the exit code itself."""
    cmd = cli_command(*args, json=json)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=cli_env(home, env, clean=clean, unset=unset))
    run = CliRun(tuple(args), proc.returncode, proc.stdout, proc.stderr)
    if check and run.returncode != 0:
        raise AssertionError(f"surgflow {' '.join(args)} exited {run.returncode}: "
                             f"{run.stderr[-3000:]}")
    return run


def start_cli(*args: str, home: Path | None = None, env: Mapping[str, str] | None = None,
              json: bool = False, clean: bool = False, unset: Iterable[str] = (),
              cwd: Path | None = None, **popen: Any) -> subprocess.Popen:
    """Start ``surgflow ARGS`` without waiting (a server, a follow-mode consumer); ``popen``
    goes to :class:`subprocess.Popen` (``stdout=``, ``stderr=``, ``text=``)."""
    return subprocess.Popen(cli_command(*args, json=json), cwd=cwd,
                            env=cli_env(home, env, clean=clean, unset=unset), **popen)


def cli_error(code: int, *args: str, **kw: Any) -> str:
    """Run ``surgflow ARGS --json``, a command that must exit with ``code``, print nothing on
    stdout and give one reason on stderr; that reason's ``error:`` line."""
    r = run_cli(*args, json=True, check=False, **kw)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]
