"""The exceptions surgflow raises.

Everything derives from :class:`SurgflowError`. The CLI maps :class:`BadInput` (and its
subclasses) to exit code 2 and every other error to exit code 1.
"""

from __future__ import annotations


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
