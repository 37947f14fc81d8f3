"""A model's pointer history: an append-only ``history.jsonl``, one move a line,
``{"stage", "from", "to", "at", "by", "via", "reason"}``, oldest first.

This file is where each pointer points: the last move of a stage is its value
(:func:`pointers`). ``via`` names what allowed the move (:data:`ALLOWED_VIA`). Lines are
appended (and fsynced) only while the model's pointer lock is held. Histories written before
``via`` existed are read by the move's reason; their lines by ``mlflow`` recorded an alias
moved outside surgflow and are not moves.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# what may allow a move of each stage
ALLOWED_VIA = {"candidate": ("register",), "approved": ("seal",),
               "production": ("seal", "force", "rollback")}
# the `by` of lines that recorded an alias moved outside surgflow (older histories)
OUTSIDE = "mlflow"


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


def moves_of(moves: list[dict]) -> list[dict]:
    """The lines that are surgflow's moves (not records of an alias moved outside it)."""
    return [m for m in moves if m.get("by") != OUTSIDE]


def last_move(moves: list[dict], stage: str) -> dict | None:
    """The last move of ``stage`` (None: never moved)."""
    for m in reversed(moves_of(moves)):
        if m.get("stage") == stage:
            return m
    return None


def pointers(moves: list[dict]) -> dict[str, int]:
    """Stage -> version of every pointer that is set."""
    out = {}
    for stage in ALLOWED_VIA:
        m = last_move(moves, stage)
        if m is not None and m.get("to") is not None:
            out[stage] = int(m["to"])
    return out


def via(move: dict) -> str:
    """What allowed ``move``: its ``via``, or for older lines what its reason says."""
    if move.get("via"):
        return move["via"]
    reason = str(move.get("reason") or "")
    if move.get("stage") == "candidate":
        return "register"
    if reason.startswith("rollback from"):
        return "rollback"
    if reason.startswith("forced past"):
        return "force"
    return "seal"


def drift(recorded: dict[str, int], aliases: dict[str, int]) -> list[dict]:
    """Each stage whose MLflow alias disagrees with the history's pointer."""
    out = []
    for stage in ALLOWED_VIA:
        have, alias = recorded.get(stage), aliases.get(stage)
        if have == alias:
            continue
        where = f"to {alias}" if alias is not None else "(alias removed)"
        out.append({"stage": stage, "alias": alias, "history": have,
                    "reason": f"{stage} alias moved outside surgflow {where}"})
    return out


def production_lineage(moves: list[dict]) -> list[int]:
    """The stack of production versions a rollback walks back through, current last.

    A move to a new version pushes it; a move back to the version held just before (a
    rollback, or a promotion that amounts to one) pops, so rolling back twice goes two
    versions back instead of toggling between the last two.
    """
    stack: list[int] = []
    for m in moves_of(moves):
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
