"""A PNG of one run: metrics and utilisation of every rank on one time axis."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from surgflow.training.runs import RunStore


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def plot_run(home: Path, run_id: str, out: Path | None = None) -> Path:
    """Write ``runs/<run_id>/run.png`` (or ``out``); seconds since the run was created on x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store = RunStore(home)
    record = store.get(run_id)
    epochs, samples = store.epochs(run_id), store.utilisation(run_id)
    t0 = _t(record["created_at"])
    has_gpu = any(s.get("gpu_util_percent") is not None for s in samples)
    rows = 4 if has_gpu else 3
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.6 * rows), sharex=True)
    _metrics(axes[0], axes[1], epochs, t0)
    _per_rank(axes[2], samples, t0, "cpu_percent", "CPU % (per rank)")
    wait = axes[2].twinx()
    _per_rank(wait, samples, t0, "loader_wait_s", "loader wait s", style=":",
              legend="upper right")
    if has_gpu:
        _per_rank(axes[3], samples, t0, "gpu_util_percent", "GPU util %")
    axes[-1].set_xlabel("seconds since the run started")
    fig.suptitle(f"run {run_id}")
    fig.tight_layout()
    path = Path(out) if out else store.dir(run_id) / "run.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _metrics(ax_loss: Any, ax_acc: Any, epochs: list[dict[str, Any]], t0: float) -> None:
    for stage in sorted({e["stage"] for e in epochs}):
        rows = [e for e in epochs if e["stage"] == stage]
        x = [_t(e["finished_at"]) - t0 for e in rows]
        ax_loss.plot(x, [e["train"]["loss"] for e in rows], "o-", label=f"{stage} train loss")
        ax_loss.plot(x, [e["val"]["loss"] for e in rows], "s--", label=f"{stage} val loss")
        ax_acc.plot(x, [e["val"]["accuracy"] for e in rows], "o-", label=f"{stage} val acc")
        ax_acc.plot(x, [e["val"]["macro_f1"] for e in rows], "s--", label=f"{stage} val F1")
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy / F1")
    ax_acc.set_ylim(0, 1.02)
    for ax in (ax_loss, ax_acc):
        if epochs:
            ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)


def _per_rank(ax: Any, samples: list[dict[str, Any]], t0: float, key: str, label: str,
              style: str = "-", legend: str = "upper left") -> None:
    for rank in sorted({s["rank"] for s in samples}):
        rows = [s for s in samples if s["rank"] == rank and s.get(key) is not None]
        ax.plot([s["t"] - t0 for s in rows], [s[key] for s in rows], style,
                label=f"rank {rank} {label}")
    ax.set_ylabel(label)
    if samples:
        ax.legend(fontsize=7, loc=legend)
