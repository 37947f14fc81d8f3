"""`surgflow models list|show|history` against `surgflow data versions`, whole processes.

Every ``models`` command used to import MLflow's client before answering (seconds); they now
read the registry without it. The baseline is ``surgflow data versions DATASET --json`` on the
same home, timed in the same run, pair by pair (A then B, alternating which goes first), so a
busy machine slows both. Target: each ``models`` command's median ratio <= 1.5.

The home holds a real dataset version (two short synthetic videos with ground truth) and
``--versions`` registered versions of one chain bundle (fresh weights, exported to ONNX with
parity), the first sealed and promoted.

    python -m bench.models_cli [--runs 7] [--versions 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = "cholecystectomy-phase"


def build_home(root: Path, versions: int) -> dict[str, str]:
    from bench.serving import make_bundle
    from surgflow import tracking
    from surgflow.config import get_settings
    from surgflow.data.synthetic import generate_video
    from surgflow.registry import ModelRegistry
    from tests.dataset_helpers import import_labelled

    home, videos = root / "home", root / "videos"
    env = {**os.environ, "SURGFLOW_HOME": str(home), "SURGFLOW_VIDEO_ROOTS": str(videos)}
    clips = [generate_video(videos / f"case-{i:04d}.mp4", seed=i, duration_s=8, fps=10,
                            width=64, height=64, gop=10).path for i in range(2)]
    import_labelled(home, [videos], clips, "cholecystectomy", "hospital-a")
    settings = get_settings(home=home, video_roots=[videos])
    bundle = root / "bundle"
    make_bundle(bundle, "resnet18", 64, clips[0])
    reg = ModelRegistry(settings)
    client = tracking.client(settings)
    exp = tracking.experiment_id(client, "surgflow/cholecystectomy", settings)
    for _ in range(versions):
        run = client.create_run(exp)
        reg.register(procedure="cholecystectomy", bundle_dir=bundle, run_id=run.info.run_id,
                     recipe_name="bench", recipe={"name": "bench"}, recipe_path=None,
                     dataset_versions=["cholecystectomy@1"], code_version="bench", metrics={})
    reg.promote(NAME, 1, force=True, reason="bench", by="bench")
    return env


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--versions", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("surgflow"))
    with tempfile.TemporaryDirectory(prefix="surgflow-bench-models-") as tmp:
        env = build_home(Path(tmp), args.versions)
        baseline = [exe, "data", "versions", "cholecystectomy", "--json"]
        commands = {"models list": [exe, "models", "list", "--json"],
                    "models show": [exe, "models", "show", f"{NAME}@production", "--json"],
                    "models history": [exe, "models", "history", NAME, "--json"]}
        for cmd in [baseline, *commands.values()]:  # warm the page cache; check they work
            timed(cmd, env)
        out = {}
        for label, cmd in commands.items():
            ratios, a_s, b_s = [], [], []
            for i in range(args.runs):
                if i % 2:
                    a, b = timed(cmd, env), timed(baseline, env)
                else:
                    b, a = timed(baseline, env), timed(cmd, env)
                a_s.append(a)
                b_s.append(b)
                ratios.append(a / b)
            out[label] = {"median_s": statistics.median(a_s),
                          "baseline_median_s": statistics.median(b_s),
                          "ratio_median": statistics.median(ratios),
                          "ratio_min": min(ratios), "ratio_max": max(ratios),
                          "runs": args.runs}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"baseline: surgflow data versions --json; {args.runs} interleaved pairs each")
    for label, r in out.items():
        print(f"{label:<15} {r['median_s']:.2f} s vs {r['baseline_median_s']:.2f} s  ratio "
              f"median {r['ratio_median']:.2f} (min {r['ratio_min']:.2f}, max "
              f"{r['ratio_max']:.2f})  target <= 1.5")


if __name__ == "__main__":
    main()
