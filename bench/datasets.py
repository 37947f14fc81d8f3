"""Dataset benchmark: clip loader throughput against raw sequential decode, and proxies.

Run: ``.venv/bin/python -m bench.datasets [--videos 4] [--seconds 90] [--rounds 2] [--json]``.
Everything is measured in one run on the same generated videos (224x224, 25 fps, GOP 250) and
the same cores:

- baseline: raw decord sequential decode, native size, one process per DataLoader worker, each
  reading its share of the videos in order;
- the clip loader: 2 DataLoader workers, 16-frame clips at 112 px, a shuffled epoch with the
  chunked-shuffle sampler, from the originals and from short-GOP proxies, as normalised float32
  clips and as uint8 clips normalised on the device; target >= 0.7 of the baseline. The purely
  random order (``shuffle=True``) is printed beside it;
- 1 fps sampling (one frame per second of video, 112 px, uint8, batches of 32, as a
  per-second feature extractor reads them): from proxies against from the 25 fps originals,
  same loader; the speed-up is reported (expected an order of magnitude).

Wall-clock ratios move with whatever else runs on the machine, so each loader figure is divided
by the mean of the baselines measured just before and after it, the median over rounds is
reported, and the ratio of frames per CPU-second (all processes involved) is printed beside it.

When ``bench/datasets_store.py`` is present, its publish and query ratios are run too and
printed in the same table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from surgflow.data.clip_sampling import ClipSpec, clip_starts, frame_step
from surgflow.data.clips import ClipDataset
from surgflow.data.frames import ClipVideo
from surgflow.data.proxies import ProxySpec, ProxyStore
from surgflow.data.samplers import ChunkedShuffleSampler
from surgflow.data.synthetic import generate_video
from surgflow.data.video import probe, sha256_file

WORKERS = 2
BATCH = 8
ONE_FPS_BATCH = 32  # single frames: a feature extractor reads them in larger batches


@dataclass(frozen=True)
class Rate:
    """Frames/s over wall-clock time, and frames per CPU-second of every process involved."""

    wall_fps: float
    cpu_fps: float


def make_videos(out: Path, n: int, seconds: float) -> list[ClipVideo]:
    videos = []
    for i in range(n):
        path = out / f"bench-{i:03d}.mp4"
        generate_video(path, seed=100 + i, duration_s=seconds, fps=25, width=224, height=224,
                       gop=250)
        info = probe(path)
        videos.append(ClipVideo.of(path, info))
    return videos


def _cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (pool and loader workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _decode_share(paths: list[str]) -> int:
    import decord

    frames = 0
    for p in paths:
        vr = decord.VideoReader(p, num_threads=1)
        n = len(vr)
        for i in range(0, n, 32):
            frames += len(vr.get_batch(list(range(i, min(i + 32, n)))).asnumpy())
    return frames


def sequential_baseline(videos: list[ClipVideo], processes: int) -> Rate:
    """``processes`` processes each decoding its share of the videos in order."""
    shares = [[v.path for v in videos[k::processes]] for k in range(processes)]
    cpu = _cpu_seconds()
    with mp.get_context("fork").Pool(processes) as pool:
        t = time.perf_counter()
        frames = sum(pool.map(_decode_share, shares))
        wall = time.perf_counter() - t
        pool.close()
        pool.join()
    return Rate(frames / wall, frames / (_cpu_seconds() - cpu))


def clip_index(videos: list[ClipVideo], spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    vids, starts = [], []
    for i, v in enumerate(videos):
        s = clip_starts(v.num_frames, spec, frame_step(v.fps, spec.fps))
        vids.append(np.full(len(s), i))
        starts.append(s)
    return np.concatenate(vids), np.concatenate(starts)


def loader_rate(videos: list[ClipVideo], spec: ClipSpec, order: str,
                max_clips: int | None = None, dtype: torch.dtype = torch.float32,
                repeat: int = 1, batch: int = BATCH) -> Rate:
    """Frames delivered to the training loop by a 2-worker DataLoader (``repeat`` passes over
    the clips in one epoch, for clip lists too short to time)."""
    video, start = clip_index(videos, spec)
    video, start = np.tile(video, repeat), np.tile(start, repeat)
    ds = ClipDataset(videos, video, start, np.zeros(len(start)), spec, dtype=dtype)
    if order == "chunked":
        sampler = ChunkedShuffleSampler(video, chunk_size=batch * 2, seed=0, batch_size=batch,
                                        num_workers=WORKERS)
        loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=WORKERS)
    else:
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=WORKERS,
                            generator=torch.Generator().manual_seed(0))
    cpu = _cpu_seconds()
    clips, total, t = 0, 0, 0.0
    batches = iter(loader)
    for batch in batches:
        total += len(batch["index"])
        if not t:  # wall time from the first batch: worker start-up is paid once per run
            t = time.perf_counter()
            continue
        clips += len(batch["index"])
        if max_clips is not None and clips >= max_clips:
            break
    wall = time.perf_counter() - t
    if hasattr(batches, "_shutdown_workers"):
        batches._shutdown_workers()  # join the workers now, so that their CPU time is counted
    return Rate(clips * spec.frames / wall, total * spec.frames / (_cpu_seconds() - cpu))


def with_proxies(videos: list[ClipVideo], store: ProxyStore, spec: ClipSpec,
                 gop: int = 16) -> tuple[list[ClipVideo], float]:
    t = time.perf_counter()
    out = []
    for v in videos:
        proxy = store.ensure(v.path, sha256_file(v.path), ProxySpec.for_clip(spec, v.fps, gop))
        out.append(v.model_copy(update={"proxy": proxy}))
    return out, time.perf_counter() - t


def store_results() -> dict | None:
    """Publish/query ratios from bench/datasets_store.py, when that benchmark exists."""
    if importlib.util.find_spec("bench.datasets_store") is None:
        return None
    done = subprocess.run([sys.executable, "-m", "bench.datasets_store", "--json"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"}
    return json.loads(done.stdout)


def run(n_videos: int, seconds: float, random_clips: int, rounds: int,
        with_store: bool) -> dict:
    r: dict = {"videos": n_videos, "seconds_each": seconds, "workers": WORKERS, "batch": BATCH,
               "rounds": rounds, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        videos = make_videos(Path(tmp) / "videos", n_videos, seconds)
        r["generate_s"] = time.perf_counter() - t
        store = ProxyStore(Path(tmp) / "home")
        clip16 = ClipSpec(frames=16, stride=1, size=112)
        proxied16, r["proxy_write_16f_s"] = with_proxies(videos, store, clip16)
        one_fps = ClipSpec(frames=1, fps=1, size=112)
        proxied1, r["proxy_write_1fps_s"] = with_proxies(videos, store, one_fps)

        measures = {
            "chunked_proxy": lambda: loader_rate(proxied16, clip16, "chunked"),
            "chunked_proxy_uint8": lambda: loader_rate(proxied16, clip16, "chunked",
                                                       dtype=torch.uint8),
            "chunked_original": lambda: loader_rate(videos, clip16, "chunked"),
            "random_original": lambda: loader_rate(videos, clip16, "random", random_clips),
            "random_proxy": lambda: loader_rate(proxied16, clip16, "random", random_clips),
        }
        wall: dict[str, list[float]] = {k: [] for k in measures}
        cpu: dict[str, list[float]] = {k: [] for k in measures}
        rates: dict[str, list[Rate]] = {k: [] for k in [*measures, "sequential"]}
        before = sequential_baseline(videos, WORKERS)
        rates["sequential"].append(before)
        for _ in range(rounds):
            for name, measure in measures.items():
                got = measure()
                after = sequential_baseline(videos, WORKERS)
                rates[name].append(got)
                rates["sequential"].append(after)
                wall[name].append(got.wall_fps / ((before.wall_fps + after.wall_fps) / 2))
                cpu[name].append(got.cpu_fps / ((before.cpu_fps + after.cpu_fps) / 2))
                before = after
        one_orig, one_proxy = [], []
        for _ in range(rounds):
            one_orig.append(loader_rate(videos, one_fps, "chunked", dtype=torch.uint8,
                                        batch=ONE_FPS_BATCH))
            one_proxy.append(loader_rate(proxied1, one_fps, "chunked", dtype=torch.uint8,
                                         repeat=8, batch=ONE_FPS_BATCH))
    med = statistics.median
    r["fps"] = {k: med(x.wall_fps for x in v) for k, v in rates.items()}
    r["sequential_fps_range"] = [min(x.wall_fps for x in rates["sequential"]),
                                 max(x.wall_fps for x in rates["sequential"])]
    r["ratios"] = {k: med(v) for k, v in wall.items()}
    r["cpu_ratios"] = {k: med(v) for k, v in cpu.items()}
    r["fps"]["one_fps_original"] = med(x.wall_fps for x in one_orig)
    r["fps"]["one_fps_proxy"] = med(x.wall_fps for x in one_proxy)
    pairs = list(zip(one_proxy, one_orig, strict=True))
    r["ratios"]["one_fps_proxy_vs_original"] = med(p.wall_fps / o.wall_fps for p, o in pairs)
    r["cpu_ratios"]["one_fps_proxy_vs_original"] = med(p.cpu_fps / o.cpu_fps for p, o in pairs)
    if with_store:
        r["store"] = store_results()
    return r


ROWS = (
    ("clip loader, chunked shuffle, proxies, float32", "chunked_proxy", ">= 0.7"),
    ("  same, uint8 clips (normalised on the device)", "chunked_proxy_uint8", ">= 0.7"),
    ("clip loader, chunked shuffle, originals GOP 250", "chunked_original", ""),
    ("clip loader, random order, originals GOP 250", "random_original", "(~0.13)"),
    ("clip loader, random order, proxies", "random_proxy", ""),
)


def print_table(r: dict) -> None:
    f, q, c = r["fps"], r["ratios"], r["cpu_ratios"]
    lo, hi = r["sequential_fps_range"]
    print(f"{r['videos']} videos x {r['seconds_each']:.0f} s, 224x224, 25 fps, GOP 250; "
          f"{r['workers']} DataLoader workers, batch {r['batch']}; {r['cpu_count']} CPUs; "
          f"median of {r['rounds']} rounds")
    print(f"sequential decode baseline: {lo:.0f}..{hi:.0f} frames/s during the run; each ratio "
          "uses the baselines measured next to it")
    print(f"{'measure (frames/s)':50s} {'value':>8s}  {'baseline':22s} {'value':>8s} "
          f"{'ratio':>6s} {'cpu-ratio':>9s}  target")
    for name, key, target in ROWS:
        print(f"{name:50s} {f[key]:8.0f}  {'sequential decode':22s} {f['sequential']:8.0f} "
              f"{q[key]:6.2f} {c[key]:9.2f}  {target}")
    key = "one_fps_proxy_vs_original"
    print(f"{'1 fps sampling from proxies, uint8':50s} {f['one_fps_proxy']:8.0f}  "
          f"{'from 25 fps originals':22s} {f['one_fps_original']:8.0f} {q[key]:6.2f} "
          f"{c[key]:9.2f}  ~10x")
    print(f"proxy writing (once per video and spec): 16-frame/25 fps proxies "
          f"{r['proxy_write_16f_s']:.1f} s, 1 fps proxies {r['proxy_write_1fps_s']:.1f} s "
          f"for {r['videos'] * r['seconds_each']:.0f} s of video")
    store = r.get("store")
    if store and "error" not in store:
        print(f"{'publish 100-segment change, 100k vs 1k segments (ms)':50s} "
              f"{store['publish_100k_ms']:8.1f}  {'1k segments':22s} "
              f"{store['publish_1k_ms']:8.1f} {store['publish_ratio']:6.2f} {'':9s}  <= 2")
        for name, qq in store["queries"].items():
            print(f"{'data query: ' + name + ' (ms)':50s} {qq['surgflow_ms']:8.2f}  "
                  f"{'DuckDB on the Parquet':22s} {qq['duckdb_direct_ms']:8.2f} "
                  f"{qq['ratio']:6.2f} {'':9s}  <= 1.5")
    elif store:
        print(f"bench.datasets_store failed: {store['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=90.0, help="length of each video")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--random-clips", type=int, default=120,
                    help="clips read in each random-order run (slow by design)")
    ap.add_argument("--no-store", action="store_true", help="skip bench.datasets_store")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args()
    r = run(args.videos, args.seconds, args.random_clips, args.rounds, not args.no_store)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print_table(r)


if __name__ == "__main__":
    main()
