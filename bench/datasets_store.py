"""Dataset store benchmark: publish cost of a small change and `data query` latency.

Run: ``.venv/bin/python -m bench.datasets_store [--json]``. Measured in one run, on one core:

- publish a 100-segment change (10 annotation events x 10 segments on 10 videos) on a dataset of
  1k segments and on one of 100k segments; target ratio 100k / 1k <= 2 (O(change), not
  O(dataset));
- ``surgflow.data.query.query`` on the 100k-segment dataset (which reads the version's runs in
  place) against DuckDB reading one Parquet file holding the same rows with the same SQL;
  target ratio <= 1.5. The first query right after a new version is printed beside it: nothing
  is built for a new version, so it is no slower than later ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from surgflow.data.labels import LabelEvent, LabelSegment
from surgflow.data.query import query
from surgflow.data.registry import VideoRecord
from surgflow.data.taxonomy import CHOLEC80_PHASES
from surgflow.data.versions import DatasetStore

DS = "cholecystectomy"
T0 = datetime(2026, 11, 20, tzinfo=UTC)
SEGMENTS_PER_VIDEO = 10
FRAMES = 10_000

QUERIES = {
    "frames per label": "SELECT label, provenance, sum(end_frame - start_frame) AS frames, "
                        "count(*) AS n FROM segments GROUP BY ALL ORDER BY ALL",
    "one video": "SELECT * FROM segments WHERE video_id = 'case-000042' ORDER BY start_frame",
    "low-confidence": "SELECT video_id, count(*) AS n FROM segments WHERE confidence < 0.5 "
                      "GROUP BY video_id ORDER BY n DESC LIMIT 20",
}


def record(i: int) -> VideoRecord:
    return VideoRecord(
        video_id=f"case-{i:06d}", uri=f"/data/case-{i:06d}.mp4", path=f"/data/case-{i:06d}.mp4",
        sha256=f"{i:064x}", size_bytes=1, procedure=DS, source=f"hospital-{'abc'[i % 3]}",
        recorded_at=T0, num_frames=FRAMES, fps=25.0, width=224, height=224,
        duration_s=FRAMES / 25, registered_at=T0,
    )


def segments(seed: int, confidence: bool) -> tuple[LabelSegment, ...]:
    step = FRAMES // SEGMENTS_PER_VIDEO
    return tuple(
        LabelSegment(k * step, (k + 1) * step, CHOLEC80_PHASES[(seed + k) % 7],
                     ((seed * 7 + k) % 10) / 10 if confidence else None)
        for k in range(SEGMENTS_PER_VIDEO)
    )


def build(home: Path, n_segments: int) -> DatasetStore:
    store = DatasetStore(home)
    n_videos = n_segments // SEGMENTS_PER_VIDEO
    videos = [record(i) for i in range(n_videos)]
    events = [LabelEvent(f"m-{i}", v.video_id, "model", T0, 0, i, segments(i, True))
              for i, v in enumerate(videos)]
    store.commit(DS, videos=videos, events=events, offsets={"surgflow.inference:0": n_videos})
    return store


def publish_times(store: DatasetStore, n_videos: int, rounds: int, tag: str = "") -> list[float]:
    """Seconds per commit of 10 human events x 10 segments on 10 videos (100 segments)."""
    times = []
    for r in range(rounds):
        events = [
            LabelEvent(f"h{tag}-{r}-{k}", f"case-{(r * 10 + k) * 7 % n_videos:06d}", "human",
                       T0 + timedelta(hours=1), 1, r * 10 + k, segments(r + k + 1, False))
            for k in range(10)
        ]
        t = time.perf_counter()
        result = store.commit(DS, videos=[], events=events,
                              offsets={"surgflow.annotations:1": r * 10 + 10})
        times.append(time.perf_counter() - t)
        assert result.applied == 10, result
    return times


def query_times(home: Path, sql: str, path: Path, repeats: int) -> tuple[float, float]:
    """Median seconds of (surgflow query, DuckDB on the Parquet file), interleaved."""
    direct_sql = sql.replace("FROM segments", f"FROM read_parquet('{path}')")
    ours, base = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        rows = query(home, sql)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        con = duckdb.connect(config={"threads": 2})
        cur = con.execute(direct_sql)
        direct = cur.fetchall()
        con.close()
        base.append(time.perf_counter() - t)
        assert len(rows) == len(direct)
    return statistics.median(ours), statistics.median(base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        pub = {}
        for n in (1_000, 100_000):
            t = time.perf_counter()
            store = build(Path(tmp) / f"s{n}", n)
            results[f"build_{n}_s"] = time.perf_counter() - t
            pub[n] = statistics.median(publish_times(store, n // SEGMENTS_PER_VIDEO, args.rounds))
            results[f"runs_{n}"] = store.manifest(DS).run_count()
        results["publish_1k_ms"] = pub[1_000] * 1e3
        results["publish_100k_ms"] = pub[100_000] * 1e3
        results["publish_ratio"] = pub[100_000] / pub[1_000]
        home = Path(tmp) / "s100000"
        publish_times(DatasetStore(home), 100_000 // SEGMENTS_PER_VIDEO, 1, tag="cold")
        t = time.perf_counter()
        query(home, QUERIES["frames per label"])
        results["first_query_after_new_version_ms"] = (time.perf_counter() - t) * 1e3
        path = Path(tmp) / "one-file.parquet"
        pq.write_table(DatasetStore(home).segments_table(DS), path)
        results["queries"] = {}
        for name, sql in QUERIES.items():
            ours, base = query_times(home, sql, path, 25)
            results["queries"][name] = {"surgflow_ms": ours * 1e3, "duckdb_direct_ms": base * 1e3,
                                        "ratio": ours / base}
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{'measure':58s} {'value':>10s} {'baseline':>10s} {'ratio':>7s} target")
    print(f"{'publish 100-segment change, 100k vs 1k segments (ms)':58s} "
          f"{results['publish_100k_ms']:10.1f} {results['publish_1k_ms']:10.1f} "
          f"{results['publish_ratio']:7.2f} <= 2")
    for name, q in results["queries"].items():
        print(f"{'query ' + name + ': surgflow vs DuckDB on Parquet (ms)':58s} "
              f"{q['surgflow_ms']:10.2f} {q['duckdb_direct_ms']:10.2f} {q['ratio']:7.2f} <= 1.5")
    print(f"first query right after a new version: "
          f"{results['first_query_after_new_version_ms']:.0f} ms (100k segments)")
    print(f"runs after {args.rounds} commits: 1k={results['runs_1000']}, "
          f"100k={results['runs_100000']}; build 100k: {results['build_100000_s']:.1f} s")


if __name__ == "__main__":
    main()
