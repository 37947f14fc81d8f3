"""The inference service on one machine: overlap of decoding and the model, speed against real
time, and /v1/analyze throughput and latency under 1, 4 and 16 concurrent clients.

All on the same chain bundle and, for the ratios, the same video:

- ``overlap``: end-to-end analysis time (``ChainRunner.analyze``) divided by decode-only time
  (the same per-second clips through the same decode thread, no model) plus model-only time (the
  same clips, already in memory, through the encoder in the runner's batches and the temporal
  net). Below 1 the decode thread hides work behind the model; the target is ≤ 0.9.
- ``× real time``: the video's duration over the end-to-end time.
- HTTP: requests/s and p50/p95 latency of ``POST /v1/analyze`` on short videos, with the
  service on loopback (embedded MLflow registry, embedded broker, events published per request).

The chain's weights are freshly initialised (speed does not depend on them); parity is checked
as at registration.

    python -m bench.serving [--arch resnet18] [--size 112] [--seconds 120] [--requests 32]
                            [--threads N] [--clients 1,4,16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.synthetic import generate_video
from surgflow.data.taxonomy import CHOLEC80_PHASES
from surgflow.data.video import probe


def make_bundle(out: Path, arch: str, size: int, golden: Path):
    from surgflow.export import build_bundle
    from surgflow.training.models import build_clip_model, build_temporal_model
    from surgflow.training.recipe import TemporalSpec

    encoder = build_clip_model(arch, len(CHOLEC80_PHASES))
    spec = TemporalSpec(stages=2, layers=8, channels=64, dropout=0.0)
    temporal = build_temporal_model(spec, encoder.feature_dim, len(CHOLEC80_PHASES))
    clip = ClipSpec(frames=1, stride=1, fps=None, size=size)
    return build_bundle(out, procedure="cholecystectomy", labels=CHOLEC80_PHASES, clip=clip,
                        encoder=encoder, temporal=temporal, temporal_spec=spec,
                        golden_video=(golden, probe(golden)), golden_seconds=8)


def decode_only(runner, path: Path) -> float:
    from surgflow.inference.decode import ClipStream, per_second_clips

    ds = per_second_clips(path, probe(path), runner.spec.clip)
    t0 = time.perf_counter()
    with ClipStream(ds, path, batch_size=runner.batch_size) as stream:
        while stream.next_batch() is not None:
            pass
    return time.perf_counter() - t0


def model_only(runner, path: Path) -> float:
    from surgflow.inference.decode import per_second_clips

    ds = per_second_clips(path, probe(path), runner.spec.clip)
    batches = [ds.batch(i, min(i + runner.batch_size, len(ds)))
               for i in range(0, len(ds), runner.batch_size)]
    t0 = time.perf_counter()
    features = [runner.encoder.run(["features", "logits"], {"clips": b})[0] for b in batches]
    if runner.temporal is not None:
        x = np.ascontiguousarray(np.concatenate(features).T[None])
        runner.temporal.run(["logits"], {"features": x})
    return time.perf_counter() - t0


def best(fn, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def serve_and_load(home: Path, bundle: Path, videos: list[Path], clients: list[int],
                   requests: int) -> list[dict]:
    from surgflow import tracking
    from surgflow.config import get_settings
    from surgflow.feedback import broker
    from surgflow.registry import ModelRegistry, model_name
    from surgflow.serving.server import BackgroundServer, build_service

    running, _ = broker.start(home)
    settings = get_settings(home=home, kafka_bootstrap=running.bootstrap,
                            video_roots=[videos[0].parent], api_token="bench-token")
    try:
        client = tracking.client(settings)
        run = client.create_run(tracking.experiment_id(client, "surgflow/cholecystectomy",
                                                       settings))
        registry = ModelRegistry(settings)
        mv = registry.register(procedure="cholecystectomy", bundle_dir=bundle,
                               run_id=run.info.run_id, recipe_name="bench", recipe={},
                               recipe_path=None, dataset_versions=[], code_version="bench",
                               metrics={})
        registry.promote(model_name("cholecystectomy"), mv.version, force=True,
                         reason="benchmark", by="bench")
        service = build_service(settings, token="bench-token", watch=False)
        rows = []
        with BackgroundServer(service) as server:
            headers = {"Authorization": "Bearer bench-token"}
            for n in clients:
                rows.append(load(server.url, headers, videos, n, requests))
        service.close()
        return rows
    finally:
        broker.stop(home)


def load(url: str, headers: dict, videos: list[Path], clients: int, requests: int) -> dict:
    """``requests`` analyses by ``clients`` concurrent HTTP clients: throughput and latency."""
    import httpx

    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    todo = list(range(requests))

    def worker():
        nonlocal failures
        with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                v = videos[i % len(videos)]
                t0 = time.perf_counter()
                r = c.post("/v1/analyze", json={"video_id": f"{v.stem}-{i}", "uri": str(v),
                                                "procedure": "cholecystectomy"})
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    failures += r.status_code != 200

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=20)
    return {"clients": clients, "requests": len(latencies), "failed": failures,
            "rps": len(latencies) / wall, "p50": statistics.median(latencies), "p95": q[18]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", help="encoder architecture")
    ap.add_argument("--size", type=int, default=112, help="clip size in pixels")
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the ratio video")
    ap.add_argument("--short-seconds", type=float, default=10.0, help="length of HTTP videos")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--threads", type=int, default=None,
                    help="onnxruntime intra-op threads (default: the cores this process has)")
    args = ap.parse_args()
    console = Console()
    from surgflow.inference import ChainRunner

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        console.print(f"generating a {args.seconds:.0f} s 224p video and short ones …")
        long = generate_video(root / "videos" / "bench-long.mp4", seed=3,
                              duration_s=args.seconds, hospital="hospital-a")
        shorts = [generate_video(root / "videos" / f"bench-short-{i}.mp4", seed=10 + i,
                                 duration_s=args.short_seconds, hospital="hospital-a").path
                  for i in range(4)]
        console.print(f"exporting {args.arch} at {args.size} px + MS-TCN …")
        make_bundle(root / "bundle", args.arch, args.size, shorts[0])
        runner = ChainRunner.load(root / "bundle", intra_op_threads=args.threads).warm()
        runs = [runner.analyze(long.path) for _ in range(args.repeats)]
        fastest = min(runs, key=lambda a: a.seconds)
        e2e = fastest.seconds
        dec = best(lambda: decode_only(runner, long.path), args.repeats)
        mod = best(lambda: model_only(runner, long.path), args.repeats)
        duration = long.num_frames / long.fps
        t = Table(title=f"one {duration:.0f} s video ({long.width}x{long.height}, "
                        f"{long.fps} fps), {args.arch} at {args.size} px + MS-TCN, "
                        f"providers {runner.providers[0]}, best of {args.repeats}")
        for col in ("end-to-end s", "decode-only s", "model-only s",
                    "e2e / (decode + model)", "× real time"):
            t.add_column(col)
        t.add_row(f"{e2e:.2f}", f"{dec:.2f}", f"{mod:.2f}", f"{e2e / (dec + mod):.2f}",
                  f"{duration / e2e:.0f}×")
        console.print(t)
        console.print("inside the fastest end-to-end run: " + ", ".join(
            f"{k} {v:.2f}" for k, v in fastest.timings.items()))
        clients = [int(c) for c in args.clients.split(",")]
        rows = serve_and_load(root / "home", root / "bundle", shorts, clients, args.requests)
        h = Table(title=f"POST /v1/analyze on {args.short_seconds:.0f} s videos (loopback, "
                        "event published per request)")
        for col in ("clients", "requests", "failed", "requests/s", "p50 s", "p95 s"):
            h.add_column(col)
        for r in rows:
            h.add_row(str(r["clients"]), str(r["requests"]), str(r["failed"]),
                      f"{r['rps']:.2f}", f"{r['p50']:.3f}", f"{r['p95']:.3f}")
        console.print(h)


if __name__ == "__main__":
    main()
