"""Dataset store at catalog scale: what a new version costs as the catalog grows.

Run: ``.venv/bin/python -m bench.datasets_scale [--large] [--json]``. For catalogs of 100k
videos with 1M and 10M segments (and 50M with ``--large``), built through the store's own
commits, each figure is measured in a fresh process, as a user's command would run:

- ``commit``: publish a 1k-segment change (100 human events x 10 segments on 100 videos);
- ``first query``: ``data query`` (labelled frames by label and provenance, a scan of every
  segment) right after that new version; ``later query``: the same again; ``one-video
  query``: one video's segments;
- ``view``: resolve a training recipe's view (train split, model labels with confidence >= 0.5,
  16-frame clips at 1 fps) into clips;
- peak memory (max RSS) of each of those processes, and of one that only imports (``baseline``).

Each of those processes starts as a ``surgflow`` command does (pyarrow's first conversion does
not import pandas; see ``surgflow.cli.common.skip_pandas_probe``).

The last columns are the growth factor from 1M to 10M segments; the targets (at 10M on a 2-core
machine): first query < 1 s, commit < 1 s, commit and query peak memory < 1 GB, and every
figure growing less than 2x from 1M to 10M.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

N_VIDEOS = 100_000
CHUNK = 10_000  # videos per building commit
QUERY = ("SELECT label, provenance, sum(end_frame - start_frame) AS frames, count(*) AS n "
         "FROM segments GROUP BY ALL ORDER BY ALL")  # scans every segment
ONE_VIDEO = "SELECT * FROM segments WHERE video_id = 'case-042042' ORDER BY start_frame"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(home: Path, per_video: int) -> None:
    """100k videos, ``per_video`` model-labelled segments each, in commits of 10k videos."""
    from bench.datasets_store import DS, T0, record
    from surgflow.data.labels import LabelEvent, LabelSegment
    from surgflow.data.taxonomy import CHOLEC80_PHASES
    from surgflow.data.versions import DatasetStore

    store = DatasetStore(home)
    frames = record(0).num_frames
    step = frames // per_video
    for first in range(0, N_VIDEOS, CHUNK):
        videos = [record(i) for i in range(first, first + CHUNK)]
        events = [LabelEvent(f"m-{i}", v.video_id, "model", T0, 0, i, tuple(
            LabelSegment(k * step, (k + 1) * step, CHOLEC80_PHASES[(i + k) % 7],
                         ((i * 7 + k) % 10) / 10) for k in range(per_video)))
            for i, v in zip(range(first, first + CHUNK), videos, strict=True)]
        store.commit(DS, videos=videos, events=events,
                     offsets={"surgflow.inference:0": first + CHUNK})


def measure(home: Path, what: str, round_: int) -> dict:
    """One figure, in this process: seconds and peak RSS."""
    from bench.datasets_store import DS, T0
    from surgflow.cli.common import skip_pandas_probe
    from surgflow.data.labels import LabelEvent, LabelSegment
    from surgflow.data.taxonomy import CHOLEC80_PHASES
    from surgflow.data.versions import DatasetStore

    skip_pandas_probe()  # as a `surgflow` command starts
    if what in ("query", "one-video"):
        from surgflow.data.query import query
    elif what == "view":  # views import the clip sampler, and with it torch
        from surgflow.data.views import ViewSpec, resolve_view
    t = time.perf_counter()
    out: dict = {}
    if what == "commit":
        tag = uuid.uuid4().hex  # a kept catalog takes new events on every run
        events = [LabelEvent(
            f"h-{tag}-{k}", f"case-{(round_ * 100 + k) * 997 % N_VIDEOS:06d}", "human",
            T0 + timedelta(hours=1 + round_), 1, round_ * 100 + k,
            tuple(LabelSegment(j * 100, (j + 1) * 100, CHOLEC80_PHASES[(k + j) % 7])
                  for j in range(10))) for k in range(100)]
        result = DatasetStore(home).commit(DS, videos=[], events=events,
                                           offsets={"surgflow.annotations:1": round_ * 100 + 100})
        assert result.applied == 100, result
        out["runs"] = DatasetStore(home).manifest(DS).run_count()
    elif what == "query":
        out["rows"] = len(query(home, QUERY))
    elif what == "one-video":
        out["rows"] = len(query(home, ONE_VIDEO))
    elif what == "view":
        spec = ViewSpec(sources=[DS], split="train", min_confidence=0.5,
                        clip={"frames": 16, "fps": 1.0})
        out["clips"] = len(resolve_view(spec, home))
    elif what != "baseline":
        raise SystemExit(f"unknown measure {what!r}")
    return {**out, "seconds": time.perf_counter() - t, "peak_mb": _rss_mb()}


def child(home: Path, what: str, round_: int = 0) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.datasets_scale", "--measure", what,
                          "--home", str(home), "--round", str(round_)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"measuring {what} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def catalog_figures(home: Path, per_video: int, rounds: int) -> dict:
    t = time.perf_counter()
    built = (home / "built").is_file()
    if not built:
        subprocess.run([sys.executable, "-m", "bench.datasets_scale", "--build", str(per_video),
                        "--home", str(home)], check=True)
        (home / "built").touch()
    figures: dict = {"segments": N_VIDEOS * per_video,
                     "build_s": None if built else time.perf_counter() - t}
    commits, first, later, one = [], [], [], []
    peaks: dict[str, list[float]] = {"commit": [], "query": []}
    for r in range(rounds):
        c = child(home, "commit", r)
        q1, q2 = child(home, "query"), child(home, "query")
        one.append(child(home, "one-video")["seconds"])
        commits.append(c["seconds"])
        first.append(q1["seconds"])
        later.append(q2["seconds"])
        peaks["commit"].append(c["peak_mb"])
        peaks["query"] += [q1["peak_mb"], q2["peak_mb"]]
        figures["runs"] = c["runs"]
    v = child(home, "view")
    figures.update({
        "commit_s": statistics.median(commits), "first_query_s": statistics.median(first),
        "later_query_s": statistics.median(later), "one_video_query_s": statistics.median(one),
        "view_s": v["seconds"], "clips": v["clips"],
        "commit_peak_mb": max(peaks["commit"]), "query_peak_mb": max(peaks["query"]),
        "view_peak_mb": v["peak_mb"],
    })
    return figures


ROWS = [("1k-segment commit (s)", "commit_s"), ("first query after it (s)", "first_query_s"),
        ("later query (s)", "later_query_s"), ("one-video query (s)", "one_video_query_s"),
        ("view resolution (s)", "view_s"),
        ("commit peak memory (MB)", "commit_peak_mb"), ("query peak memory (MB)", "query_peak_mb"),
        ("view peak memory (MB)", "view_peak_mb")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", action="store_true", help="also 50M segments")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path,
                    help="build the catalogs here and keep them; a later run reuses them "
                         "(each run adds its commits to them)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--build", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        return build(args.home, args.build)
    if args.measure:
        return print(json.dumps(measure(args.home, args.measure, args.round)))
    results: dict = {"baseline_peak_mb": None, "catalogs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        results["baseline_peak_mb"] = child(Path(tmp), "baseline")["peak_mb"]
        for per_video in (10, 100, *((500,) if args.large else ())):
            key = f"{N_VIDEOS * per_video // 1_000_000}M"
            results["catalogs"][key] = catalog_figures(root / key, per_video, args.rounds)
            print(f"built and measured {key}: {json.dumps(results['catalogs'][key])}",
                  file=sys.stderr)
    cats = results["catalogs"]
    results["growth_1m_to_10m"] = {k: cats["10M"][k] / cats["1M"][k] for _, k in ROWS}
    if args.json:
        print(json.dumps(results, indent=1))
        return
    names = list(cats)
    print(f"{'100k videos':28s}" + "".join(f"{n + ' segments':>14s}" for n in names)
          + f"{'10M / 1M':>10s}")
    for label, k in ROWS:
        print(f"{label:28s}" + "".join(f"{cats[n][k]:14.3f}" for n in names)
              + f"{results['growth_1m_to_10m'][k]:10.2f}")
    print(f"{'runs in the version':28s}" + "".join(f"{cats[n]['runs']:14d}" for n in names))
    print(f"{'clips in the view':28s}" + "".join(f"{cats[n]['clips']:14d}" for n in names))
    print(f"{'catalog build (s)':28s}" + "".join(
        f"{cats[n]['build_s']:14.1f}" if cats[n]["build_s"] else f"{'reused':>14s}"
        for n in names))
    print(f"peak memory of a process that only imports: {results['baseline_peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
