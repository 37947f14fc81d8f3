"""Peak memory of an analysis does not grow with the video's length.

Each analysis runs in a fresh process; its peak resident set (``VmHWM``: ``ru_maxrss`` would
carry over the parent's peak across ``exec``) is compared with its resident set once the chain
is loaded and warmed. Bound stated: a 10-minute video (6000
frames, 600 per-second clips) peaks at most 80 MB above the loaded process, and at most 25 MB
above the peak of a 1-minute video of the same stream: what grows with length is only the
per-second features and the per-frame label arrays (kilobytes per minute here).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from surgflow.data.synthetic import generate_video

BOUND_OVER_LOADED_MB = 80
BOUND_LONG_OVER_SHORT_MB = 25

SCRIPT = """
import json, sys
import psutil

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

from surgflow.inference import ChainRunner
runner = ChainRunner.load(sys.argv[1], intra_op_threads=1).warm()
loaded = psutil.Process().memory_info().rss
a = runner.analyze(sys.argv[2])
peak = hwm()
print(json.dumps({"loaded": loaded, "peak": peak, "frames": a.num_frames,
                  "seconds": a.seconds}))
"""


def _measure(bundle_dir, video) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle_dir), str(video)],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # generating and analysing a 10-minute video: about a minute
def test_peak_memory_of_a_long_video_is_bounded_and_independent_of_its_length(
        tmp_path, tiny_chain_bundle):
    short = generate_video(tmp_path / "mem-short.mp4", seed=5, duration_s=60, fps=10,
                           width=64, height=64, gop=50)
    long = generate_video(tmp_path / "mem-long.mp4", seed=5, duration_s=600, fps=10,
                          width=64, height=64, gop=50)
    s = _measure(tiny_chain_bundle.bundle_dir, short.path)
    g = _measure(tiny_chain_bundle.bundle_dir, long.path)
    assert g["frames"] == 6000 and s["frames"] == 600
    mb = 1 << 20
    over_loaded = (g["peak"] - g["loaded"]) / mb
    over_short = (g["peak"] - s["peak"]) / mb
    print(f"10-min video: peak {g['peak'] / mb:.0f} MB, {over_loaded:.1f} MB over the loaded "
          f"process, {over_short:.1f} MB over a 1-min video; analysed in {g['seconds']:.1f} s")
    assert over_loaded < BOUND_OVER_LOADED_MB
    assert over_short < BOUND_LONG_OVER_SHORT_MB
