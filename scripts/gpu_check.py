"""GPU check: 1-GPU NCCL training with AMP of the default chain (ResNet-50 frame encoder, then
the causal temporal network) and of R3D-18, through the real launcher on a local Dask cluster
with one GPU worker. Records steady-state samples/s and GPU utilisation/memory per stage.

    python scripts/gpu_check.py OUT_DIR [--small]      (--small: a quick CPU dry run)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _video(args: tuple[str, int, float, int, int]) -> str:
    from surgflow.data.synthetic import generate_video

    path, seed, duration, fps, size = args
    generate_video(path, seed=seed, duration_s=duration, fps=fps, width=size, height=size, gop=fps)
    return path


def make_home(root: Path, n_train: int, n_val: int, duration: float, size: int) -> Path:
    from surgflow.data.splits import ids_filling_splits
    from tests.dataset_helpers import import_labelled

    picked = ids_filling_splits({"train": n_train, "val": n_val}, "case-{:04d}".format)
    jobs = [(str(root / "videos" / f"{vid}.mp4"), i + 1, duration, 25, size) for i, vid in picked]
    with ProcessPoolExecutor(max(1, min(len(jobs), (os.cpu_count() or 2) - 2))) as pool:
        videos = [Path(p) for p in pool.map(_video, jobs)]
    home = root / "home"
    import_labelled(home, [root], videos, "cholecystectomy", "hospital-a")
    return home


def recipes(gpu: bool, small: bool) -> list[dict]:
    res = {"world_size": 1, "gpus_per_rank": 1 if gpu else 0, "rendezvous_timeout_s": 120,
           "max_attempts": 1}
    data = {"sources": ["cholecystectomy"], "min_confidence": None}
    chain = {
        "name": "gpu-resnet50-mstcn", "data": data,
        "clip": {"frames": 1, "stride": 1, "fps": 5, "size": 64 if small else 224},
        "model": {"architecture": "tiny2d" if small else "resnet50"},
        "optim": {"epochs": 2 if small else 3, "batch_size": 16 if small else 128, "lr": 3e-4,
                  "amp": True, "num_workers": 2 if small else 8,
                  "clips_per_epoch": 64 if small else 12000, "chunk_size": 16},
        "temporal": {"stages": 2, "layers": 10, "channels": 64,
                     "optim": {"epochs": 5 if small else 30, "batch_size": 1, "lr": 5e-4,
                               "optimizer": "adam", "schedule": "constant", "amp": True}},
        "resources": res,
    }
    r3d = {
        "name": "gpu-r3d18", "data": data,
        "clip": {"frames": 4 if small else 16, "stride": 1, "fps": 5, "size": 64 if small else 112},
        "model": {"architecture": "tiny3d" if small else "r3d_18"},
        "optim": {"epochs": 2 if small else 3, "batch_size": 8 if small else 32, "lr": 1e-3,
                  "optimizer": "sgd", "amp": True, "num_workers": 2 if small else 8,
                  "clips_per_epoch": 32 if small else 3000},
        "resources": res,
    }
    return [chain, r3d]


def summarise(home: Path, run_id: str) -> dict:
    from surgflow.training.runs import RunStore

    store = RunStore(home)
    record, epochs, samples = store.get(run_id), store.epochs(run_id), store.utilisation(run_id)
    out: dict = {"run_id": run_id, "status": record["status"],
                 "model_version": (record.get("result") or {}).get("model_version"),
                 "stages": {}}
    for stage in sorted({e["stage"] for e in epochs}):
        rows = [e for e in epochs if e["stage"] == stage]
        later = rows[1:] or rows
        lo = min(_t(e["finished_at"]) - e["train"]["seconds"] for e in rows) - 1
        hi = max(_t(e["finished_at"]) for e in rows)
        util = [s for s in samples if lo <= s["t"] <= hi]
        gpu = [s["gpu_util_percent"] for s in util if s.get("gpu_util_percent") is not None]
        mem = [s["gpu_mem_mb"] for s in util if s.get("gpu_mem_mb") is not None]
        out["stages"][stage] = {
            "epochs": len(rows),
            "samples_per_s_steady": sum(e["train"]["samples_per_s"] for e in later) / len(later),
            "loader_wait_share": sum(e["train"]["loader_wait_s"] for e in later)
            / max(1e-9, sum(e["train"]["seconds"] for e in later)),
            "val_accuracy": rows[-1]["val"]["accuracy"],
            "val_macro_f1": rows[-1]["val"]["macro_f1"],
            "gpu_util_percent_mean": sum(gpu) / len(gpu) if gpu else None,
            "gpu_util_percent_max": max(gpu) if gpu else None,
            "gpu_mem_mb_max": max(mem) if mem else None,
            "utilisation_samples": len(util),
        }
    return out


def _t(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--small", action="store_true", help="tiny models on CPU (dry run)")
    args = parser.parse_args()
    import torch

    from surgflow.config import get_settings
    from surgflow.training.cluster import connect
    from surgflow.training.pipeline import execute_run, prepare_run
    from surgflow.training.recipe import parse_recipe

    gpu = torch.cuda.is_available() and not args.small
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/surgflow-gpu-check"))
    t0 = time.time()
    home = make_home(root, 4 if args.small else 10, 2 if args.small else 3,
                     20 if args.small else 90, 64 if args.small else 224)
    report: dict = {"device": torch.cuda.get_device_name(0) if gpu else "cpu",
                    "torch": torch.__version__, "data_s": time.time() - t0, "runs": []}
    os.environ["SURGFLOW_HOME"] = str(home)
    settings = get_settings(home=home, dask_address=None)
    with connect(1, gpus_per_worker=1 if gpu else 0, settings=settings) as client:
        client.wait_for_workers(1)
        for spec in recipes(gpu, args.small):
            recipe = parse_recipe(spec)
            started = time.time()
            run_id = prepare_run(recipe, home)
            try:
                execute_run(run_id, home, client)
            except Exception as e:  # record and go on to the next model
                report["runs"].append({"recipe": recipe.name, "error": f"{type(e).__name__}: {e}"})
                continue
            row = summarise(home, run_id) | {"recipe": recipe.name,
                                              "wall_s": time.time() - started,
                                              "backend": "nccl" if gpu else "gloo"}
            report["runs"].append(row)
            print(json.dumps(row, indent=1), flush=True)
            from surgflow.training.plot import plot_run

            plot_run(home, run_id, args.out / f"{recipe.name}.png")
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    # run as a file, not a module: the repository root (for tests/dataset_helpers.py) is not
    # on the path by itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
