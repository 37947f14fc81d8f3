"""Dataset benchmark: clip loader throughput against raw sequential decode, and proxies.

Run: ``.venv/bin/python -m bench.datasets [--videos 6] [--seconds 120] [--json]``. Everything is
measured in one run on the same generated videos (224x224, 25 fps, GOP 250) and the same cores:

- baseline: raw decord sequential decode, native size, one process per DataLoader worker, each
  reading its share of the videos in order;
- the clip loader: 2 DataLoader workers, 16-frame clips at 112 px, a shuffled epoch with the
  chunked-shuffle sampler, from the originals and from short-GOP proxies, as normalised float32
  clips and as uint8 clips normalised on the device; target >= 0.7 of the baseline. The purely
  random order (``shuffle=True``) is printed beside it;
- 1 fps sampling (8-frame clips at 1 fps, 112 px): from proxies against from the 25 fps
  originals, same loader; the speed-up is reported (expected an order of magnitude).

When ``bench/datasets_store.py`` is present, its publish and query ratios are run too and
printed in the same table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from surgflow.data.clip_sampling import ChunkedShuffleSampler, ClipSpec, clip_starts, frame_step
from surgflow.data.clips import ClipDataset, ClipVideo
from surgflow.data.proxies import ProxySpec, ProxyStore
from surgflow.data.synthetic import generate_video
from surgflow.data.video import probe, sha256_file

WORKERS = 2
BATCH = 8


def make_videos(out: Path, n: int, seconds: float) -> list[ClipVideo]:
    videos = []
    for i in range(n):
        path = out / f"bench-{i:03d}.mp4"
        generate_video(path, seed=100 + i, duration_s=seconds, fps=25, width=224, height=224,
                       gop=250)
        info = probe(path)
        videos.append(ClipVideo(path.stem, str(path), info.fps, info.num_frames, info.width,
                                info.height))
    return videos


def _decode_share(paths: list[str]) -> int:
    import decord

    frames = 0
    for p in paths:
        vr = decord.VideoReader(p, num_threads=1)
        n = len(vr)
        for i in range(0, n, 32):
            frames += len(vr.get_batch(list(range(i, min(i + 32, n)))).asnumpy())
    return frames


def sequential_baseline(videos: list[ClipVideo], processes: int) -> float:
    """Frames/s of ``processes`` processes each decoding its share of the videos in order."""
    shares = [[v.path for v in videos[k::processes]] for k in range(processes)]
    with mp.get_context("fork").Pool(processes) as pool:
        pool.map(_decode_share, [[videos[0].path]] * processes)  # start the workers first
        t = time.perf_counter()
        frames = sum(pool.map(_decode_share, shares))
        return frames / (time.perf_counter() - t)


def clip_index(videos: list[ClipVideo], spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    vids, starts = [], []
    for i, v in enumerate(videos):
        s = clip_starts(v.num_frames, spec, frame_step(v.fps, spec.fps))
        vids.append(np.full(len(s), i))
        starts.append(s)
    return np.concatenate(vids), np.concatenate(starts)


def loader_fps(videos: list[ClipVideo], spec: ClipSpec, order: str,
               max_clips: int | None = None, dtype: torch.dtype = torch.float32) -> float:
    """Frames/s delivered to the training loop by a 2-worker DataLoader."""
    video, start = clip_index(videos, spec)
    ds = ClipDataset(videos, video, start, np.zeros(len(start)), spec, dtype=dtype)
    if order == "chunked":
        sampler = ChunkedShuffleSampler(video, chunk_size=BATCH * 2, seed=0, batch_size=BATCH,
                                        num_workers=WORKERS)
        loader = DataLoader(ds, batch_size=BATCH, sampler=sampler, num_workers=WORKERS)
    else:
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                            generator=torch.Generator().manual_seed(0))
    clips, t = 0, 0.0
    for batch in loader:
        if not t:  # time from the first batch: worker start-up is paid once per training run
            t = time.perf_counter()
            continue
        clips += len(batch["index"])
        if max_clips is not None and clips >= max_clips:
            break
    return clips * spec.frames / (time.perf_counter() - t)


def with_proxies(videos: list[ClipVideo], store: ProxyStore, spec: ClipSpec,
                 gop: int = 16) -> tuple[list[ClipVideo], float]:
    t = time.perf_counter()
    out = []
    for v in videos:
        proxy = store.ensure(v.path, sha256_file(v.path), ProxySpec.for_clip(spec, v.fps, gop))
        out.append(ClipVideo(v.video_id, v.path, v.fps, v.num_frames, v.width, v.height, proxy))
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


def run(n_videos: int, seconds: float, random_clips: int, with_store: bool) -> dict:
    r: dict = {"videos": n_videos, "seconds_each": seconds, "workers": WORKERS,
               "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        videos = make_videos(Path(tmp) / "videos", n_videos, seconds)
        r["generate_s"] = time.perf_counter() - t
        store = ProxyStore(Path(tmp) / "home")
        clip16 = ClipSpec(frames=16, stride=1, size=112)
        proxied16, r["proxy_write_16f_s"] = with_proxies(videos, store, clip16)

        one_fps = ClipSpec(frames=8, stride=1, fps=1, size=112)
        proxied1, r["proxy_write_1fps_s"] = with_proxies(videos, store, one_fps)

        # Other work on the machine shifts absolute rates; each loader figure is divided by the
        # mean of the sequential baselines measured right before and right after it.
        measures = {
            "loader_chunked_proxy": lambda: loader_fps(proxied16, clip16, "chunked"),
            "loader_chunked_proxy_uint8": lambda: loader_fps(proxied16, clip16, "chunked",
                                                             dtype=torch.uint8),
            "loader_chunked": lambda: loader_fps(videos, clip16, "chunked"),
            "loader_random": lambda: loader_fps(videos, clip16, "random", random_clips),
            "loader_random_proxy": lambda: loader_fps(proxied16, clip16, "random", random_clips),
        }
        r["ratios"] = {}
        before = sequential_baseline(videos, WORKERS)
        baselines = [before]
        for name, measure in measures.items():
            r[f"{name}_fps"] = measure()
            after = sequential_baseline(videos, WORKERS)
            baselines.append(after)
            r["ratios"][f"{name}_vs_sequential"] = r[f"{name}_fps"] / ((before + after) / 2)
            before = after
        r["sequential_fps"] = float(np.median(baselines))
        r["sequential_fps_range"] = [min(baselines), max(baselines)]
        r["one_fps_original_fps"] = loader_fps(videos, one_fps, "chunked")
        r["one_fps_proxy_fps"] = loader_fps(proxied1, one_fps, "chunked")
        r["ratios"]["one_fps_proxy_vs_original"] = (r["one_fps_proxy_fps"]
                                                    / r["one_fps_original_fps"])
    if with_store:
        r["store"] = store_results()
    return r


def print_table(r: dict) -> None:
    seq, q = r["sequential_fps"], r["ratios"]
    rows = [
        ("clip loader, chunked shuffle, proxies (frames/s)", r["loader_chunked_proxy_fps"],
         "sequential decode", seq, q["loader_chunked_proxy_vs_sequential"], ">= 0.7"),
        ("  same, uint8 clips (normalised on the device)", r["loader_chunked_proxy_uint8_fps"],
         "sequential decode", seq, q["loader_chunked_proxy_uint8_vs_sequential"], ">= 0.7"),
        ("clip loader, chunked shuffle, originals GOP 250", r["loader_chunked_fps"],
         "sequential decode", seq, q["loader_chunked_vs_sequential"], ""),
        ("clip loader, random order, originals GOP 250", r["loader_random_fps"],
         "sequential decode", seq, q["loader_random_vs_sequential"], "(~0.13)"),
        ("clip loader, random order, proxies", r["loader_random_proxy_fps"],
         "sequential decode", seq, q["loader_random_proxy_vs_sequential"], ""),
        ("1 fps 8-frame clips from proxies (frames/s)", r["one_fps_proxy_fps"],
         "from 25 fps originals", r["one_fps_original_fps"], q["one_fps_proxy_vs_original"],
         "~10x"),
    ]
    lo, hi = r["sequential_fps_range"]
    print(f"{r['videos']} videos x {r['seconds_each']:.0f} s, 224x224, 25 fps, GOP 250; "
          f"{r['workers']} DataLoader workers, batch {BATCH}; {r['cpu_count']} CPUs; "
          f"sequential baseline {lo:.0f}..{hi:.0f} frames/s over the run (ratios use the "
          "baselines measured next to each figure)")
    print(f"{'measure':50s} {'value':>9s}  {'baseline':22s} {'value':>9s} {'ratio':>7s}  target")
    for name, value, base_name, base, ratio, target in rows:
        print(f"{name:50s} {value:9.0f}  {base_name:22s} {base:9.0f} {ratio:7.2f}  {target}")
    print(f"proxy writing (once per video and spec): 16-frame/25 fps proxies "
          f"{r['proxy_write_16f_s']:.1f} s, 1 fps proxies {r['proxy_write_1fps_s']:.1f} s "
          f"for {r['videos'] * r['seconds_each']:.0f} s of video")
    store = r.get("store")
    if store and "error" not in store:
        print(f"{'publish 100-segment change, 100k vs 1k segments (ms)':50s} "
              f"{store['publish_100k_ms']:9.1f}  {'1k segments':22s} {store['publish_1k_ms']:9.1f} "
              f"{store['publish_ratio']:7.2f}  <= 2")
        for name, q in store["queries"].items():
            print(f"{'data query: ' + name + ' (ms)':50s} {q['surgflow_ms']:9.2f}  "
                  f"{'DuckDB on the Parquet':22s} {q['duckdb_direct_ms']:9.2f} {q['ratio']:7.2f}"
                  f"  <= 1.5")
    elif store:
        print(f"bench.datasets_store failed: {store['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=120.0, help="length of each video")
    ap.add_argument("--random-clips", type=int, default=240,
                    help="clips read in the random-order run (it is slow by design)")
    ap.add_argument("--no-store", action="store_true", help="skip bench.datasets_store")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args()
    r = run(args.videos, args.seconds, args.random_clips, not args.no_store)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print_table(r)


if __name__ == "__main__":
    main()
