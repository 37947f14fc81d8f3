"""A model's pointer history: an append-only ``history.jsonl``, one move a line,
``{"stage", "from", "to", "at", "by", "reason"}``, oldest first.

MLflow keeps only where each alias points now; this file keeps how it got there. Lines are
appended (and fsynced) only while the model's pointer lock is held, so the history of each
stage is the exact sequence of its alias values.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def read(path: Path) -> list[dict]:
    """Every move in ``path``, oldest first ([] if there is none yet)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    moves = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            moves.append(json.loads(line))
        except ValueError:
            # only a crash in the middle of an append can leave this; the move did not complete
            log.warning("%s:%d: skipping a torn history line", path, n)
    return moves


def append(path: Path, move: dict) -> None:
    """Append one move durably (call with the model's pointer lock held)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(move, sort_keys=False) + "\n"
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn last line: start on a line of our own
                line = "\n" + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def last_to(moves: list[dict], stage: str) -> int | None:
    """Where ``stage`` points according to the history (None: never set, or unset)."""
    for m in reversed(moves):
        if m.get("stage") == stage:
            return m.get("to")
    return None


def production_lineage(moves: list[dict]) -> list[int]:
    """The stack of production versions a rollback walks back through, current last.

    A move to a new version pushes it; a move back to the version held just before (a
    rollback, or a promotion that amounts to one) pops, so rolling back twice goes two
    versions back instead of toggling between the last two.
    """
    stack: list[int] = []
    for m in moves:
        if m.get("stage") != "production":
            continue
        to = m.get("to")
        if to is None:
            stack.clear()
        elif len(stack) >= 2 and stack[-2] == to:
            stack.pop()
        elif not stack or stack[-1] != to:
            stack.append(to)
    return stack


def previous_production(moves: list[dict]) -> int | None:
    """The version production held before the current one (None: there is none)."""
    stack = production_lineage(moves)
    return stack[-2] if len(stack) >= 2 else None
