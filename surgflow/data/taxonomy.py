"""Procedures and their label taxonomies (SPEC §4).

``cholecystectomy`` is built in with the seven Cholec80 phases. Users add procedures; a
procedure may later be extended with new labels appended at the end, but never redefined in a
way that would invalidate existing data (removing, renaming or reordering labels changes the
class indices that datasets and models depend on).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, field_validator

from surgflow.data.privacy import PRIVACY, PRIVACY_LABELS
from surgflow.errors import BadInput, ConflictError, UnknownName
from surgflow.storage import write_atomic

CHOLEC80_PHASES = (
    "Preparation",
    "CalotTriangleDissection",
    "ClippingCutting",
    "GallbladderDissection",
    "GallbladderPackaging",
    "CleaningCoagulation",
    "GallbladderRetraction",
)

#: a procedure name, which is also its dataset's name
NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
_NAME = re.compile(f"^{NAME_PATTERN}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


class Procedure(BaseModel, frozen=True):
    """A procedure name and its ordered labels; a label's index is its class index."""

    name: str
    labels: tuple[str, ...]
    builtin: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"procedure name {v!r} must be 1-64 lowercase letters, digits, '-' or '_'"
            )
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("a procedure needs at least one label")
        seen: set[str] = set()
        for label in v:
            if not label or not label.strip():
                raise ValueError("labels must be non-empty")
            if not _LABEL.match(label):
                raise ValueError(
                    f"label {label!r} must start with a letter or digit and use only letters, "
                    "digits, space, '_', '.', '-' (at most 64 characters)"
                )
            if label in seen:
                raise ValueError(f"label {label!r} appears twice")
            seen.add(label)
        return v

    def index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise UnknownName(
                f"label of procedure {self.name!r}", label, list(self.labels)
            ) from None


BUILTIN = {
    "cholecystectomy": Procedure(name="cholecystectomy", labels=CHOLEC80_PHASES, builtin=True),
    # the privacy label track of every video, whatever its procedure (surgflow.data.privacy)
    PRIVACY: Procedure(name=PRIVACY, labels=PRIVACY_LABELS, builtin=True),
}


def is_track(name: str) -> bool:
    """Whether ``name`` is a label track that videos of every procedure join (``privacy``),
    rather than a procedure videos are registered under."""
    return name == PRIVACY


def dataset_takes(dataset: str, video_procedure: str) -> bool:
    """Whether a video of ``video_procedure`` may join ``dataset``: its procedure's dataset,
    or a label track."""
    return dataset == video_procedure or is_track(dataset)


class ProcedureCatalog:
    """Procedures known under ``SURGFLOW_HOME/procedures``, plus the built-in ones."""

    def __init__(self, home: Path):
        self.root = Path(home) / "procedures"

    def list(self) -> list[Procedure]:
        found = dict(BUILTIN)
        if self.root.is_dir():
            for f in sorted(self.root.glob("*.json")):
                p = Procedure.model_validate_json(f.read_text())
                found[p.name] = p
        return sorted(found.values(), key=lambda p: p.name)

    def get(self, name: str) -> Procedure:
        if name in BUILTIN:
            return BUILTIN[name]
        f = self.root / f"{name}.json"
        if _NAME.match(name) and f.is_file():
            return Procedure.model_validate_json(f.read_text())
        raise UnknownName("procedure", name, [p.name for p in self.list()])

    def add(self, name: str, labels: list[str]) -> tuple[Procedure, bool]:
        """Define a procedure, or extend one with labels appended at the end.

        Returns ``(procedure, changed)``. Redefining with the same labels is a no-op; any other
        change than appending labels raises ConflictError naming what would break.
        """
        try:
            new = Procedure(name=name, labels=tuple(labels))
        except ValueError as e:
            raise BadInput(f"procedure {name!r}: {_first_error(e)}") from e
        reserved = sorted(set(labels) & set(PRIVACY_LABELS))
        if reserved and name != PRIVACY:
            raise BadInput(f"procedure {name!r}: labels {reserved} belong to the privacy track "
                           "every video carries; name the phases otherwise")
        if name in BUILTIN:
            if tuple(labels) == BUILTIN[name].labels:
                return BUILTIN[name], False
            raise ConflictError(f"procedure {name!r} is built in and cannot be redefined")
        path = self.root / f"{name}.json"
        if path.exists():
            old = Procedure.model_validate_json(path.read_text())
            if old.labels == new.labels:
                return old, False
            if new.labels[: len(old.labels)] != old.labels:
                raise ConflictError(
                    f"procedure {name!r} has labels {list(old.labels)}; a redefinition may only "
                    f"append labels, got {list(new.labels)}"
                )
        write_atomic(path, new.model_dump_json(indent=2).encode())
        return new, True


def _first_error(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        return "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in errors())
    return str(e)
