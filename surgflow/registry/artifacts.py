"""A version's artifacts on disk, checked against the sha256 recorded at registration."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from surgflow.errors import BadInput

log = logging.getLogger(__name__)


class ArtifactMismatch(BadInput):
    """A registered artifact is missing, altered, or joined by a file never registered."""


def file_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (streamed)."""
    from surgflow.export import file_hashes as hashes

    return hashes(root)


def mismatches(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Each difference between the registered and the found hashes, in words."""
    out = []
    for path in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(path), actual.get(path)
        if got is None:
            out.append(f"{path} is missing (registered sha256 {want})")
        elif want is None:
            out.append(f"{path} was never registered (sha256 {got})")
        elif want != got:
            out.append(f"{path} has sha256 {got}, registered {want}")
    return out


def verify(root: Path, expected: dict[str, str], ref: str) -> None:
    """Raise :class:`ArtifactMismatch` unless the files under ``root`` are exactly the
    registered ones with their registered sha256."""
    if not expected:
        raise ArtifactMismatch(f"{ref}: no artifact hashes are registered; cannot verify {root}")
    if not Path(root).is_dir():
        raise ArtifactMismatch(f"{ref}: artifact directory {root} does not exist")
    found = mismatches(expected, file_hashes(Path(root)))
    if found:
        raise ArtifactMismatch(f"{ref}: artifacts in {root} do not match the registry: "
                               + "; ".join(found))


def local_path(uri: str) -> Path | None:
    """The local directory an artifact URI names, or None for a remote store."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def download(client: Any, run_id: str, artifact_path: str, cached: Path,
             expected: dict[str, str] | None, ref: str) -> Path:
    """The run's artifacts under ``artifact_path``, downloaded once into ``cached`` from a
    remote store; with ``expected``, verified (a damaged cache is fetched again)."""
    if cached.is_dir():
        try:
            if expected is not None:
                verify(cached, expected, ref)
            return cached
        except ArtifactMismatch:
            log.warning("%s: cached artifacts in %s differ from the registry; fetching them "
                        "again", ref, cached)
            shutil.rmtree(cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".download-"))
    try:
        got = Path(client.download_artifacts(run_id, artifact_path, str(tmp)))
        if expected is not None:
            verify(got, expected, ref)
        try:
            got.rename(cached)
        except OSError:
            if not cached.is_dir():  # else another process finished the same download
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached
