"""Checkpoints: written by rank 0 after every epoch, read by every rank to resume.

A checkpoint holds the bare model (never its DDP wrapper), the optimiser, scheduler and AMP
scaler states, the epoch just finished, the recipe, the dataset versions and the code version
that made it, so any checkpoint says exactly where it came from. Files are published atomically:
a crash leaves the previous checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

from surgflow.storage import write_atomic

_EPOCH_FILE = re.compile(r"^epoch-(\d{4})\.pt$")


@functools.cache
def code_version() -> str:
    """``git describe`` of the source tree when there is one, else version + source hash."""
    import surgflow

    root = Path(surgflow.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=root, capture_output=True,
            text=True, timeout=10, check=True,
        )
        if out.stdout.strip():
            return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("surgflow")
    except PackageNotFoundError:
        v = "0"
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return f"surgflow-{v}+{h.hexdigest()[:12]}"


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "checkpoints" / stage


def save(
    run_dir: Path,
    stage: str,
    epoch: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    recipe: dict[str, Any],
    dataset_versions: list[str],
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoints/<stage>/epoch-NNNN.pt``; call on rank 0 with the unwrapped model."""
    state = {
        "stage": stage,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "recipe": recipe,
        "dataset_versions": list(dataset_versions),
        "code_version": code_version(),
        "metrics": metrics,
        **(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    path = stage_dir(run_dir, stage) / f"epoch-{epoch:04d}.pt"
    write_atomic(path, buf.getvalue())
    return path


def latest(run_dir: Path, stage: str) -> Path | None:
    """The checkpoint of the last finished epoch of ``stage``, if any."""
    d = stage_dir(run_dir, stage)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return max(found)[1] if found else None


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=False)


def restore(
    state: dict[str, Any], *, model: torch.nn.Module, optimizer: Any = None, scheduler: Any = None,
    scaler: Any = None,
) -> int:
    """Load a checkpoint into the (unwrapped) model and its training state; the epoch done."""
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"])


def weights_digest(model: torch.nn.Module) -> str:
    """A content hash of a model's weights: the version of a trained stage."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
