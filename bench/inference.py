"""onnxruntime against torch eager on the same model, batch and inputs: ratio = torch / ort.

Every registered stage is timed as the chain runner runs it: an encoder graph takes raw uint8
clips and normalises inside (torch runs the very same module, :class:`EncoderGraph`), the
temporal network (MS-TCN, the recipe default: 2 stages × 8 layers × 64 channels) runs over a
whole video's per-second features. Weights are random (timing does not depend on them). Both
sides get the same number of threads. The CUDA section (onnxruntime's CUDA provider against
torch eager on the GPU, host-to-device copy of the uint8 input and the copy back of the outputs
included on both sides) runs only where a GPU is visible.

    python -m bench.inference [--repeats 7] [--threads N] [--archs tiny2d,resnet18,...]
                              [--explore]

What was found on the development machine (2 shared Xeon cores, no AVX-512, load average
8-11 from other work, so single figures move by ±20%; ratios are timed in turn within each
repeat so both sides meet the same load), ``--repeats 3``:

    tiny2d 3.45×, tiny3d 1.60×, resnet18 2.79×, mstcn 5.35× (targets ≥ 1.3: met);
    r3d_18 0.80×, mc3_18 0.76×, r2plus1d_18 1.31× (target ≥ 1.0: r3d_18 and mc3_18 not met)

- graph optimisation level ``ORT_ENABLE_ALL`` (kept): over BASIC/EXTENDED it gains 1.7-2×
  on resnet18 (conv + batch-norm + relu fusions, NCHWc layout) and 1.2-1.4× on the MS-TCN; on
  r3d_18 the levels are within noise (BASIC 1.06×, EXTENDED 0.90×).
- ``ORT_PARALLEL`` execution loses everywhere (0.6-0.8×): the graphs are single chains of
  convolutions. ``ORT_SEQUENTIAL`` kept, one inter-op thread.
- thread spinning: onnxruntime 1.31 already has ``session.intra_op.allow_spinning`` off here
  (the option reports it set to 0), so that variant is the default.
- intra-op threads: 1 thread beat 2 (resnet18 1.32×, mstcn 1.44×) only because the two cores
  were oversubscribed by other processes; on an idle machine use every core of the affinity
  mask (the default).
- 3D clip models: the profile is 99% ``Conv``/``FusedConv`` (3×3×3 kernels), for which
  onnxruntime's CPU provider runs im2col + GEMM while torch runs oneDNN's direct 3D
  convolution; disabling the Conv+ReLU fusion (0.77× vs 0.85×) and rewriting each Conv3d as a
  sum of per-tap Conv2d (±10% per layer, slower on deep layers) did not close the gap. The
  (2+1)D factorisation (r2plus1d_18) is where onnxruntime wins. Where a 3D clip model must run
  on the CPU, prefer r2plus1d_18, or serve it on a GPU.
- No GPU was lent to the run that produced these figures; the CUDA section ran nowhere yet.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from surgflow.export.graphs import EncoderGraph, TemporalGraph, export_encoder, export_temporal
from surgflow.export.sessions import CPU, CUDA, cpu_threads, session_options
from surgflow.training.models import CLIP_ARCHITECTURES, MSTCN, build_clip_model

CLASSES = 7
# (frames, size, batch) per architecture kind: the recipes' usual inputs
FRAME_INPUT = (1, 224, 16)
VIDEO_INPUT = (8, 112, 4)
TEMPORAL_INPUT = (1, 512, 3600)  # batch, features, seconds: an hour of video at 1 per second
DEFAULT_ARCHS = "tiny2d,tiny3d,resnet18,r3d_18,mc3_18,r2plus1d_18,mstcn"


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 2,
          sync: Callable[[], None] = lambda: None) -> float:
    """Median seconds per call after ``warmup`` calls."""
    return paired([fn], repeats, warmup, sync)[0]


def paired(fns: list[Callable[[], Any]], repeats: int, warmup: int = 2,
           sync: Callable[[], None] = lambda: None) -> list[float]:
    """Median seconds per call of each of ``fns``, timed in turn within each repeat, so that
    on a shared machine every contender meets the same load."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def build(name: str, out: Path) -> tuple[torch.nn.Module, np.ndarray, Path, str]:
    """The module torch runs, its input, its ONNX file and a description of the input."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if name == "mstcn":
        b, d, length = TEMPORAL_INPUT
        model = MSTCN(d, CLASSES, stages=2, layers=8, channels=64).eval()
        x = rng.standard_normal((b, d, length)).astype(np.float32)
        path = export_temporal(model, torch.from_numpy(x[:, :, :64]), out / f"{name}.onnx")
        return TemporalGraph(model).eval(), x, path, f"B={b} D={d} L={length}"
    arch = CLIP_ARCHITECTURES[name]
    frames, size, batch = FRAME_INPUT if arch.kind == "frame" else VIDEO_INPUT
    frames = arch.fixed_frames or max(frames, arch.min_frames)
    size = arch.fixed_size or max(size, arch.min_size)
    model = build_clip_model(name, CLASSES).eval()
    x = rng.integers(0, 256, (batch, 3, frames, size, size), dtype=np.uint8)
    path = export_encoder(model, torch.from_numpy(x[:2]), out / f"{name}.onnx")
    return EncoderGraph(model).eval(), x, path, f"B={batch} {frames}×{size}²"


def ort_session(path: Path, providers: list[str], threads: int, **overrides: Any):
    import onnxruntime as ort

    opts = session_options(threads)
    for key, value in overrides.items():
        if key == "config":
            for k, v in value.items():
                opts.add_session_config_entry(k, v)
        else:
            setattr(opts, key, value)
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def input_name(name: str) -> str:
    return "features" if name == "mstcn" else "clips"


def cpu_rows(names: list[str], out: Path, threads: int, repeats: int) -> list[list[str]]:
    torch.set_num_threads(threads)
    rows = []
    for name in names:
        module, x, path, shape = build(name, out)
        sess = ort_session(path, [CPU], threads)
        feed = {input_name(name): x}
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            t_torch, t_ort = paired([lambda m=module, xt=xt: m(xt),
                                     lambda s=sess, f=feed: s.run(None, f)], repeats)
        rows.append([name, shape, f"{t_torch * 1e3:,.1f}", f"{t_ort * 1e3:,.1f}",
                     f"{t_torch / t_ort:.2f}×"])
    return rows


def explore(names: list[str], out: Path, threads: int, repeats: int) -> list[list[str]]:
    """Each session option against the default options, on ``names``."""
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel
    variants: dict[str, dict[str, Any]] = {
        "default (ALL, sequential)": {},
        "graph level BASIC": {"graph_optimization_level": level.ORT_ENABLE_BASIC},
        "graph level EXTENDED": {"graph_optimization_level": level.ORT_ENABLE_EXTENDED},
        "parallel execution": {"execution_mode": ort.ExecutionMode.ORT_PARALLEL,
                               "inter_op_num_threads": threads},
        "no thread spinning": {"config": {"session.intra_op.allow_spinning": "0"}},
        "1 intra-op thread": {"intra_op_num_threads": 1},
    }
    rows = []
    for name in names:
        _, x, path, shape = build(name, out)
        feed = {input_name(name): x}
        sessions = [ort_session(path, [CPU], threads, **o) for o in variants.values()]
        times = paired([lambda s=s, f=feed: s.run(None, f) for s in sessions], repeats)
        for label, t in zip(variants, times, strict=True):
            rows.append([name, shape, label, f"{t * 1e3:,.1f}", f"{times[0] / t:.2f}×"])
    return rows


def gpu_rows(names: list[str], out: Path, repeats: int) -> list[list[str]]:
    rows = []
    sync = torch.cuda.synchronize
    for name in names:
        module, x, path, shape = build(name, out)
        module = module.cuda()
        sess = ort_session(path, [CUDA, CPU], cpu_threads())
        feed = {input_name(name): x}

        def torch_gpu(m=module, x=x) -> Any:
            out = m(torch.from_numpy(x).cuda(non_blocking=False))
            return [o.cpu() for o in (out if isinstance(out, tuple) else (out,))]

        with torch.inference_mode():
            t_torch, t_ort = paired([torch_gpu, lambda s=sess, f=feed: s.run(None, f)],
                                    repeats, warmup=3, sync=sync)
        rows.append([name, shape, f"{t_torch * 1e3:,.2f}", f"{t_ort * 1e3:,.2f}",
                     f"{t_torch / t_ort:.2f}×"])
    return rows


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=cpu_threads())
    parser.add_argument("--archs", default=DEFAULT_ARCHS,
                        help="comma-separated architectures (and 'mstcn')")
    parser.add_argument("--explore", action="store_true",
                        help="also time each session option against the defaults")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU comparison")
    args = parser.parse_args()
    names = [n.strip() for n in args.archs.split(",") if n.strip()]
    console = Console()
    cols = ["model", "input", "torch eager ms", "onnxruntime ms", "ratio torch/ort"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if not args.no_cpu:
            console.print(_table(
                f"CPU, {args.threads} threads: onnxruntime vs torch eager (targets: ≥ 1.3 for "
                "resnet18 + mstcn, ≥ 1.0 for 3D clip models)",
                cols, cpu_rows(names, out, args.threads, args.repeats)))
        if args.explore:
            console.print(_table(
                "onnxruntime CPU session options (ratio: default time / this option's time)",
                ["model", "input", "option", "ms", "vs default"],
                explore([n for n in ("resnet18", "r3d_18", "mstcn") if n in names] or names,
                        out, args.threads, args.repeats)))
        import onnxruntime as ort

        if torch.cuda.is_available() and CUDA in ort.get_available_providers():
            console.print(_table(
                f"GPU ({torch.cuda.get_device_name()}): onnxruntime CUDA provider vs torch "
                "eager, copies in and out included (target ≥ 1.5 for resnet18 + mstcn)",
                cols, gpu_rows(names, out, args.repeats)))
        else:
            console.print("no CUDA device visible: GPU comparison skipped")


if __name__ == "__main__":
    main()
