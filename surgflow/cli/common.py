"""What every `surgflow` command shares: `--json`, exit codes, stderr logging, progress.

A command function returns plain data (dicts, lists). With ``--json`` that data is printed as
exactly one JSON document on stdout; without it, a renderer prints it for people. Errors never
reach stdout: :class:`~surgflow.errors.BadInput` exits 2, anything else exits 1, each with a
one-line reason on stderr.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from surgflow.errors import BadInput

JsonOption = typer.Option(False, "--json", help="Print exactly one JSON document on stdout.")

stderr_console = Console(stderr=True)
stdout_console = Console()
log = logging.getLogger("surgflow")


class _NoPandas:
    """An import finder under which ``import pandas`` fails (see :func:`skip_pandas_probe`)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("pandas is not probed for", name="pandas")


def skip_pandas_probe() -> None:
    """Keep pyarrow from importing pandas (about 0.45 s) on a command's first table.

    The first time pyarrow converts Python objects it imports pandas, only to recognise pandas
    objects among them, which no surgflow command passes it. That first probe is made here with
    pandas out of reach, so pyarrow notes "no pandas" and goes on; it imports pandas for real
    the first time anything asks it for pandas (``to_pandas``, ``from_pandas``), so code that
    uses pandas in the same process still works.
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


def _default(o: Any) -> Any:
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(data: Any) -> str:
    return json.dumps(data, default=_default, sort_keys=False)


def emit(data: Any, as_json: bool, render: Callable[[Any], None] | None = None) -> None:
    """Print a command's result: one JSON document, or a rendering for people."""
    if as_json:
        sys.stdout.write(to_json(data) + "\n")
        sys.stdout.flush()
    elif render is not None:
        render(data)
    else:
        render_auto(data)


def render_auto(data: Any) -> None:
    """A readable default: a table for a list of flat dicts, key/value lines for a dict."""
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        table = Table(*[str(k) for k in data[0]])
        for row in data:
            table.add_row(*[_cell(row.get(k)) for k in data[0]])
        stdout_console.print(table)
    elif isinstance(data, dict):
        for k, v in data.items():
            stdout_console.print(f"[bold]{k}[/bold]: {_cell(v)}")
    elif isinstance(data, list) and not data:
        stdout_console.print("(none)")
    else:
        stdout_console.print(_cell(data))


def _cell(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return to_json(v)
    return "" if v is None else str(v)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map exceptions to SPEC §6 exit codes with a one-line reason on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except BadInput as e:
            _fail(2, str(e))
        except KeyboardInterrupt:
            _fail(1, "interrupted")
        except Exception as e:
            log.debug("command failed", exc_info=True)
            _fail(1, f"{type(e).__name__}: {e}")

    return wrapper


def _fail(code: int, reason: str) -> None:
    one_line = " ".join(reason.split())
    sys.stderr.write(f"error: {one_line}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def setup_logging(verbose: bool = False) -> None:
    """Send logs to stderr; called once by the entrypoint, never at import."""
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger("surgflow")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        # Prefect configures the root logger too; without this every line would print twice.
        root.propagate = False
    root.setLevel(level)


@contextmanager
def prefect_api() -> Iterator[str]:
    """A Prefect API for a command that runs flows: ``PREFECT_API_URL``, the local server under
    SURGFLOW_HOME, or one started now; one started for the command keeps running after it,
    and the command ends by saying so on stderr. Enter it before Prefect is imported: Prefect
    reads PREFECT_API_URL once, when it is imported."""
    import os

    from surgflow.cli.local.prefect_server import ensure_server, running_server
    from surgflow.config import get_settings

    home = get_settings().home
    started = not (os.environ.get("PREFECT_API_URL") or running_server(home))
    url = ensure_server(home)
    try:
        yield url
    finally:
        if started:
            stderr_console.print(
                f"the Prefect server started for this run is still running at {url}; "
                "`surgflow down` stops it", soft_wrap=True, highlight=False)


@contextmanager
def progress(description: str, total: float | None, enabled: bool = True) -> Iterator[Callable]:
    """A rich progress bar on stderr; yields ``advance(n=1)``."""
    if not enabled or not stderr_console.is_terminal:
        yield lambda n=1: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=stderr_console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextmanager
def spinner(description: str, enabled: bool = True) -> Iterator[None]:
    """A rich spinner on stderr for work whose length is not known up front."""
    if not enabled or not stderr_console.is_terminal:
        yield
        return
    with stderr_console.status(description):
        yield
