"""Decoded frames/s of decord sequential reads on generated 224p and 480p videos.

This is the physical limit every data-loading benchmark is compared to: nothing that decodes
these videos on one core can deliver frames faster than reading them in order.

    python -m bench.decode [--seconds 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import decord
from rich.console import Console
from rich.table import Table

from surgflow.data.synthetic import generate_video

SIZES = {"224p": (400, 224), "480p": (854, 480)}


def sequential_fps(path: Path, batch: int = 32) -> tuple[float, int]:
    """Frames/s of one in-order pass over ``path`` with one decoder thread."""
    vr = decord.VideoReader(str(path), num_threads=1)
    n = len(vr)
    start = time.perf_counter()
    for i in range(0, n, batch):
        vr.get_batch(list(range(i, min(i + batch, n)))).asnumpy()
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each video")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    table = Table(title="decord sequential decode, 1 thread (physical-limit baseline)")
    for col in ("video", "size", "fps", "frames", "decoded frames/s (best)", "median"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (w, h) in SIZES.items():
            for fps in (25, 30):
                path = Path(tmp) / f"{name}-{fps}.mp4"
                generate_video(path, seed=1, duration_s=args.seconds, fps=fps, width=w, height=h)
                rates = sorted(sequential_fps(path)[0] for _ in range(args.repeats))
                n = len(decord.VideoReader(str(path), num_threads=1))
                table.add_row(
                    path.stem,
                    f"{w}x{h}",
                    str(fps),
                    str(n),
                    f"{rates[-1]:,.0f}",
                    f"{rates[len(rates) // 2]:,.0f}",
                )
    Console().print(table)


if __name__ == "__main__":
    main()
