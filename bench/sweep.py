"""Sweep throughput: trials per hour with two trials at once against one at a time.

Baseline: the sweep run one trial at a time (``concurrency 1``) on a local Dask cluster of two
workers. Measured: the same sweep with two trials at once (``concurrency 2``), each trial
holding one worker. Both run the same trials — the same seeds and the same values, enqueued in
the same order into a fresh study (pruning off, so every trial trains every epoch) — on the same
cluster in the same process, each trial a full training run (run directory, MLflow child run,
DDP group on Dask) at world size 1 and one thread per rank. Trials per hour is the number of
trials over the sweep's wall time (store, MLflow runs and launches included). The ratio is
two-at-once over one-at-a-time, per repeat (goal ≥ 1.6 on two cores); the runs of a repeat
alternate their order, and the median and spread of the ratios are printed. An unmeasured
two-trial sweep first warms both workers (imports, the MLflow store, the clip proxies).

The default model is ResNet-18 at 64 px, so that a trial's time is its training, as on a GPU
cluster. With ``--model tiny2d`` a rank spends about a fifth of its CPU in its video decoder's
thread (about 1.2 cores busy per rank), so on a 2-core machine two trials at once can reach
no more than about 1.65× and measure nearer 1.45×: the cores, not the sweep, are the limit.

    python -m bench.sweep [--trials 4] [--epochs 3] [--clips 192] [--model resnet18]
                          [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from surgflow.training.recipe import Recipe, parse_recipe
from tests.training_helpers import labelled_home

#: the learning rates of the trials after trial 0 (the recipe's own 0.01), in order
RATES = (0.003, 0.03, 0.001, 0.02, 0.005, 0.05, 0.002)


def recipe(args: argparse.Namespace) -> Recipe:
    return parse_recipe({
        "name": "bench-sweep",
        "data": {"sources": ["cholecystectomy"], "min_confidence": None},
        "clip": {"frames": 1, "stride": 1, "fps": 5, "size": args.size},
        "model": {"architecture": args.model},
        "optim": {"epochs": args.epochs, "batch_size": 16, "lr": 0.01, "seed": 0,
                  "clips_per_epoch": args.clips},
        "resources": {"world_size": 1, "threads_per_rank": 1},
        "sweep": {"trials": args.trials, "pruning": False, "seed": 0,
                  "space": {"optim.lr": {"low": 0.0005, "high": 0.1, "log": True}}},
    })


def run_once(home: Path, rec: Recipe, client: Any, concurrency: int, store: Path) -> dict:
    """One sweep of ``rec`` into a fresh study at ``store``; its wall time and trial values."""
    from surgflow.config import get_settings
    from surgflow.sweeps.study import open_study, run_sweep

    settings = get_settings(home=home, dask_address=None, sweep_storage=f"sqlite:///{store}")
    _, study = open_study(settings.sweep_storage_url(), rec)  # trial 0: the recipe's own values
    for lr in RATES[: rec.sweep.trials - 1]:
        study.enqueue_trial({"optim.lr": lr})
    started = time.perf_counter()
    out = run_sweep(settings, rec, None, concurrency=concurrency, client=client)
    wall = time.perf_counter() - started
    values = {t["params"]["optim.lr"]: t["value"] for t in out["trials"]}
    return {"wall_s": wall, "trials": len(out["ran"]),
            "trials_per_h": len(out["ran"]) / wall * 3600, "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--clips", type=int, default=192, help="training clips per epoch")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not 2 <= args.trials <= len(RATES) + 1:
        parser.error(f"--trials must be 2 to {len(RATES) + 1}")
    from surgflow.config import get_settings
    from surgflow.training.cluster import connect

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as d:
        tmp = Path(d)
        home = labelled_home(tmp, duration_s=30, fps=10, size=96)
        os.environ["SURGFLOW_HOME"] = str(home)
        rec = recipe(args)
        pairs = []
        with connect(2, settings=get_settings(home=home, dask_address=None)) as client:
            client.wait_for_workers(2)
            warm = rec.model_copy(update={"sweep": rec.sweep.model_copy(update={"trials": 2})})
            run_once(home, warm, client, 2, tmp / "warm-up.db")
            for i in range(args.repeats):
                order = (1, 2) if i % 2 == 0 else (2, 1)
                runs = {c: run_once(home, rec, client, c, tmp / f"study-{i}-{c}.db")
                        for c in order}
                pairs.append((runs[1], runs[2]))
                print(f"repeat {i + 1}: one at a time {runs[1]['wall_s']:.1f} s, two at once "
                      f"{runs[2]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    show(args, pairs)


def show(args: argparse.Namespace, pairs: list[tuple[dict, dict]]) -> None:
    table = Table(title=f"sweep throughput: {args.trials} trials of {args.model} {args.size}px, "
                        f"{args.epochs} epochs × {args.clips} clips, world size 1, 1 thread/rank, "
                        f"{os.cpu_count()} CPU cores, 2 Dask workers")
    for col in ("configuration", "wall s", "trials/h", "ratio"):
        table.add_column(col)
    ratios = []
    for i, (one, two) in enumerate(pairs, 1):
        ratio = two["trials_per_h"] / one["trials_per_h"]
        ratios.append(ratio)
        table.add_row(f"1 at a time (baseline) #{i}", f"{one['wall_s']:.1f}",
                      f"{one['trials_per_h']:.0f}", "1.00")
        table.add_row(f"2 at once #{i}", f"{two['wall_s']:.1f}",
                      f"{two['trials_per_h']:.0f}", f"{ratio:.2f}× (goal ≥ 1.6)")
        same = all(abs(one["values"][k] - two["values"][k]) < 1e-9 for k in one["values"])
        if not same:
            table.add_row("", "", "", "[red]trial values differ between the two runs[/red]")
    median = statistics.median(ratios)
    table.add_row("median ratio", "", "", f"{median:.2f}× (spread {min(ratios):.2f}–"
                                           f"{max(ratios):.2f})")
    Console().print(table)


if __name__ == "__main__":
    main()
