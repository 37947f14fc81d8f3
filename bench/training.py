"""DDP on Dask against torchrun: steady-state samples/s, launch overhead, 2 ranks vs 1.

Every configuration trains the same recipe (model, clips, batch size, threads per rank) on the
same dataset version with the same rank program (:func:`surgflow.training.job.run_rank`); only
the launcher differs. Steady state is the mean training samples/s of every epoch after the
first. Launch overhead is the time from the start of the launch (the Prefect flow for the flow
row) to the first optimiser step of rank 0.

    python -m bench.training [--epochs 4] [--clips 384] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from surgflow.training.recipe import Recipe, parse_recipe
from surgflow.training.runs import RunStore
from tests.training_helpers import labelled_home


def recipe(world: int, args: argparse.Namespace) -> Recipe:
    return parse_recipe({
        "name": f"bench-w{world}",
        "data": {"sources": ["cholecystectomy"], "min_confidence": None},
        "clip": {"frames": 4, "stride": 1, "fps": 5, "size": args.size},
        "model": {"architecture": args.model},
        "optim": {"epochs": args.epochs, "batch_size": 16, "lr": 0.01, "seed": 0,
                  "clips_per_epoch": args.clips},
        "resources": {"world_size": world, "threads_per_rank": 1},
    })


def steady(home: Path, run_id: str) -> float:
    rows = [e for e in RunStore(home).epochs(run_id) if e["stage"] == "clip"]
    later = rows[1:] or rows
    return sum(e["train"]["samples_per_s"] for e in later) / len(later)


def first_step(home: Path, run_id: str) -> float:
    """When rank 0 took its first optimiser step (unix time)."""
    return min(e["first_step_at"] for e in RunStore(home).epochs(run_id) if "first_step_at" in e)


def run_dask(home: Path, rec: Recipe, client: Any) -> dict[str, float]:
    from surgflow.training.pipeline import execute_run, prepare_run

    run_id = prepare_run(rec, home)
    started = time.time()
    execute_run(run_id, home, client)
    return {"samples_per_s": steady(home, run_id), "launch_s": first_step(home, run_id) - started}


def run_torchrun(home: Path, rec: Recipe) -> dict[str, float]:
    from surgflow.training.pipeline import prepare_run

    run_id = prepare_run(rec, home)
    job = {"run_dir": str(RunStore(home).dir(run_id)), "home": str(home), "threads": 1,
           "rendezvous_timeout_s": 120}
    torchrun = Path(sys.executable).with_name("torchrun")
    started = time.time()
    subprocess.run([str(torchrun), "--standalone", f"--nproc_per_node={rec.resources.world_size}",
                    "-m", "bench.training", "--rank-job", json.dumps(job)], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    return {"samples_per_s": steady(home, run_id), "launch_s": first_step(home, run_id) - started}


def run_flow(home: Path, rec: Recipe, address: str, tmp: Path) -> float:
    """Flow start → rank 0's first step, with a Prefect server and the Dask cluster up."""
    import yaml

    from surgflow.cli.local.prefect_server import export, start_server

    server = start_server(tmp / "prefect")
    export(server.api_url)
    os.environ["SURGFLOW_DASK_ADDRESS"] = address
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from surgflow_flows.training import TrainingParams, training_flow

        path = tmp / "bench.yaml"
        path.write_text(yaml.safe_dump(rec.model_dump(mode="json")))
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            started = time.time()
            record = training_flow(TrainingParams(recipe_path=str(path)))
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()  # before the server goes away
        return first_step(home, record["run_id"]) - started
    finally:
        os.environ.pop("SURGFLOW_DASK_ADDRESS", None)
        server.stop()


def rank_job(job_json: str) -> None:
    """Entry point under torchrun: the same rank program, rendezvous through env://."""
    from surgflow.training.job import run_rank

    run_rank(json.loads(job_json), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "", 0,
             int(os.environ.get("LOCAL_RANK", 0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--clips", type=int, default=384, help="training clips per epoch")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="tiny3d")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternating torchrun/Dask pairs (shared machines are noisy)")
    parser.add_argument("--rank-job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_job:
        rank_job(args.rank_job)
        return
    from surgflow.config import get_settings
    from surgflow.training.cluster import connect

    with tempfile.TemporaryDirectory(prefix="bench-training-") as d:
        tmp = Path(d)
        home = labelled_home(tmp, duration_s=40, fps=10, size=96)
        os.environ["SURGFLOW_HOME"] = str(home)
        settings = get_settings(home=home, dask_address=None)
        t0 = time.time()
        with connect(2, settings=settings) as client:
            client.wait_for_workers(2)
            cluster_s = time.time() - t0
            pairs = []
            for _ in range(args.repeats):
                pairs.append((run_torchrun(home, recipe(2, args)),
                              run_dask(home, recipe(2, args), client)))
                print(f"torchrun vs Dask, 2 ranks: {pairs[-1]}", file=sys.stderr, flush=True)
            dask1 = run_dask(home, recipe(1, args), client)
            print(f"Dask, 1 rank: {dask1}", file=sys.stderr, flush=True)
            flow_s = run_flow(home, recipe(2, args), client.scheduler.address, tmp)
    show(args, pairs, dask1, cluster_s, flow_s)


def show(args: argparse.Namespace, pairs: list[tuple[dict, dict]], dask1: dict,
         cluster_s: float, flow_s: float) -> None:
    table = Table(title=f"training throughput, {args.model} {args.size}px 4-frame clips, "
                        f"batch 16/rank, 1 thread/rank, {os.cpu_count()} CPU cores")
    for col in ("configuration", "samples/s (steady)", "launch → first step s", "ratio"):
        table.add_column(col)
    for i, (torch2, dask2) in enumerate(pairs, 1):
        ratio = dask2["samples_per_s"] / torch2["samples_per_s"]
        table.add_row(f"torchrun, 2 ranks (baseline) #{i}", f"{torch2['samples_per_s']:.1f}",
                      f"{torch2['launch_s']:.2f}", "1.00")
        table.add_row(f"DDP on Dask, 2 ranks #{i}", f"{dask2['samples_per_s']:.1f}",
                      f"{dask2['launch_s']:.2f}", f"{ratio:.2f} of torchrun (target ≥ 0.95)")
    t2 = sum(p[0]["samples_per_s"] for p in pairs) / len(pairs)
    d2 = sum(p[1]["samples_per_s"] for p in pairs) / len(pairs)
    ratios = sorted(p[1]["samples_per_s"] / p[0]["samples_per_s"] for p in pairs)
    median = ratios[len(ratios) // 2] if len(ratios) % 2 else sum(
        ratios[len(ratios) // 2 - 1 : len(ratios) // 2 + 1]) / 2
    table.add_row("mean of the pairs", f"{d2:.1f} vs {t2:.1f}", "",
                  f"{d2 / t2:.2f} of torchrun (median pair ratio {median:.2f})")
    scale = d2 / dask1["samples_per_s"]
    table.add_row("DDP on Dask, 1 rank", f"{dask1['samples_per_s']:.1f}",
                  f"{dask1['launch_s']:.2f}", f"2 ranks = {scale:.2f}× 1 rank")
    table.add_row("Prefect flow → Dask, 2 ranks", "", f"{flow_s:.2f}",
                  "Prefect flow run start → first step")
    Console().print(table)
    Console().print(f"local Dask cluster start: {cluster_s:.2f} s (not in the launch times)")


if __name__ == "__main__":
    main()
