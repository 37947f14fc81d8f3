"""The exceptions surgflow raises.

Everything derives from :class:`SurgflowError`. The CLI maps :class:`BadInput` (and its
subclasses) to exit code 2 and every other error to exit code 1. :func:`describe_validation` is
the one way a pydantic validation error becomes a one-line reason (settings, recipes, messages).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class SurgflowError(Exception):
    """Base class of every error surgflow raises on purpose."""


class BadInput(SurgflowError):
    """The caller gave something invalid: a value, a file, a name, a query."""


class ConfigError(BadInput):
    """A setting in the environment or a recipe file is invalid."""


class NotFound(BadInput):
    """A named thing (dataset, version, video, procedure, run) does not exist."""


class UnknownName(BadInput):
    """A name was looked up in a registry that does not know it."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known) or '(none)'}")


class VideoError(BadInput):
    """A video file is missing, empty, truncated or cannot be decoded."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


class DeadlineExceeded(BadInput):
    """An operation given a time limit (an analysis's ``deadline_s``) did not finish within it."""


class ConflictError(BadInput):
    """Something already exists with different content (a video_id, a procedure, a version)."""


class UnsafeURI(BadInput):
    """A video URI resolves outside the configured video roots, or uses an unsupported scheme."""


class BrokerError(SurgflowError):
    """The Kafka broker could not be reached or refused an operation."""


class TrackingError(SurgflowError):
    """The MLflow tracking server could not be reached or refused an operation."""


class DecodeError(SurgflowError):
    """Decoding frames from a registered video failed after retries."""


class HasErrors(Protocol):
    """A validation failure that lists its errors as pydantic does (a pydantic
    ``ValidationError``, FastAPI's ``RequestValidationError``)."""

    def errors(self) -> Sequence[Any]: ...


def dotted(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a dotted path: ``("optim", "lr")`` → ``optim.lr``."""
    return ".".join(str(p) for p in loc)


def describe_validation(
    e: HasErrors,
    name: Callable[[tuple[int | str, ...]], str] = dotted,
    *,
    allowed: Callable[[tuple[int | str, ...]], list[str]] | None = None,
    limit: int = 5,
) -> str:
    """A validation failure as one line: each bad field as ``<name>: <what is wrong> (got
    <value>)``, ``<name> is required`` or ``<name> is not allowed here; allowed: ...``, joined
    by ``; `` (the first ``limit``, then how many more).

    ``name`` turns an error's location into the field's name as the user wrote it (an
    environment variable, a recipe path); ``allowed`` lists the fields that may appear where an
    unknown one was found (its argument is the location of the mapping that holds it).
    """
    errors = e.errors()
    parts = []
    for err in errors[:limit]:
        where = name(tuple(err["loc"]))
        if err["type"] == "missing":
            parts.append(f"{where} is required")
        elif err["type"] == "extra_forbidden":
            known = allowed(tuple(err["loc"][:-1])) if allowed else []
            parts.append(f"{where} is not allowed here"
                         + (f"; allowed: {', '.join(known)}" if known else ""))
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {msg} (got {_shown(err.get('input'))})")
    more = len(errors) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"
