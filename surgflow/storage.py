"""Durable file primitives shared by every local store under ``SURGFLOW_HOME``: the data
store, the model registry, the feedback checkpoints, the services' state files.

``write_exclusive`` is the no-overwrite publish: data goes to a temporary file, is fsynced,
and is then hard-linked to its final name. ``os.link`` fails if the name exists, so of two
writers racing for one name exactly one wins, and a crash leaves either no file or a complete
one (never a half-written file under the final name).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def write_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists; True if this call created it."""
    path = Path(path)
    return publish_exclusive(_write_temp(path.parent, data), path)


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The bytes of ``path``, written first from ``make()`` if it does not exist. Of racing
    creators one wins and all read its bytes; the file is readable by its owner only (a
    secret may be kept this way)."""
    path = Path(path)
    if not path.is_file():
        write_exclusive(path, make())  # mkstemp's file: mode 0600, kept by the link
    return path.read_bytes()


def publish_exclusive(tmp: Path, path: Path) -> bool:
    """Link the finished temporary file ``tmp`` (same directory) to ``path`` unless ``path``
    exists, then remove ``tmp``; True if this call published it."""
    try:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    _fsync_dir(Path(path).parent)
    return True


def temp_path(directory: Path, suffix: str = "") -> Path:
    """A new empty temporary file in ``directory`` (for writers that need a path)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    return Path(tmp)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (for mutable pointers, never for versions)."""
    path = Path(path)
    tmp = _write_temp(path.parent, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1, default=str) + "\n").encode()


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (created if missing) across processes."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path):
        yield


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None if it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
