"""Feedback-loop benchmark: merge throughput vs raw Kafka consumption, --once and follow mode.

Run: ``.venv/bin/python -m bench.feedback [--events 60000] [--videos 24] [--partitions 6]``
(``--events 240000`` for a backlog long enough that the group join stops dominating).

The workload: N inference/annotation events (70 % model, 30 % human) on V registered videos,
keyed by ``video_id`` on P partitions, produced once. The baseline is kafka-python reading the
same N messages raw (assign, seek to beginning, poll until all are in, records kept), with the C
record checksum (``crc32c``) that surgflow installs. A second baseline, ``raw (python crc)``,
reads them in a subprocess in which ``crc32c`` cannot be imported, so kafka-python checks every
record batch in pure Python (about five times slower here): that is how kafka-python runs
without its ``crc32c`` extra, and what ratios against raw consume were measured against before.

1. ``--once``. ``FeedbackConsumer.run_once`` over them: consume, validate (JSON + schema +
   taxonomy + range), merge, and commit the new dataset version. Ratio = surgflow events/s /
   raw events/s (target >= 0.5). Both are repeated (interleaved, each merge into a fresh copy
   of the home) and the best of each is reported, with the median of the per-pair ratios,
   since a shared machine makes single runs noisy. surgflow pauses the cyclic garbage
   collector while it reads and merges a batch, so a stricter second baseline reads raw with
   the collector paused too.
2. Follow mode, as a user runs it: 1, then 3, ``surgflow feedback run`` processes with their
   default batch bounds, in one consumer group, on a fresh copy of the home. Time from
   starting the processes until the latest dataset version holds every event: Python start,
   the group join (the broker waits about half the session timeout for members) and every
   version included. ``after_join`` rates start at the first partition assignment a consumer
   logs. Each measurement is paired with a raw consume just before it (ratio = pair's).
   ``vs_raw_bound`` is the most ``vs_raw`` could be after that join: reading at raw speed
   with a merge that cost nothing (raw / (join + raw)).
   Each run also reports where the consumers' time went (``time_s``, summed over them, from
   their ``feedback run --json``), their lost races and rebalances, and ``version_cost``: the
   merge + races + commit seconds of each version, first tenth of the versions against the
   last. The summary gives per consumer count the median, range and spread of events/s over
   ``--follow-repeats`` runs, and prints them as a table on stderr.
   Target: three >= 1.25x one in the median, never below 1.0 in a pair; one consumer's
   spread < 1.5; the last tenth of the versions <= 1.5x the first tenth's cost; the same
   fingerprint as ``--once`` (nothing lost or doubled). ``vs_once`` compares the run with the
   best ``--once`` merge of the same events (1.0 = follow mode keeps pace with it). ``cpu_s`` is the
   consumers' CPU time together: on a machine shared with other work, wall figures follow the
   CPU that was free.
3. Latency. A follow-mode consumer (``max_seconds`` = 0.2) runs in this process; annotations are
   produced one at a time and timed until the dataset version that contains each is published.

Everything runs on the embedded broker in a temporary SURGFLOW_HOME (or the broker named by
SURGFLOW_KAFKA_BOOTSTRAP). Prints one JSON document at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

LABELS = ("Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection",
          "GallbladderPackaging", "CleaningCoagulation", "GallbladderRetraction")
T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
DATASET = "cholecystectomy"
FOLLOW_TIMEOUT_S = 600.0
_ASSIGNED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*: assigned \d+ partitions",
                       re.MULTILINE)


def _label_events(videos, n: int, seed: int) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v = rng.choice(videos)
        segs, start = [], 0
        while start < v.num_frames and len(segs) < 4:
            end = min(v.num_frames, start + rng.randrange(20, 200))
            seg = {"start_frame": start, "end_frame": end, "label": rng.choice(LABELS)}
            segs.append(seg)
            start = end
        at = (T0 + timedelta(seconds=rng.randrange(10**7))).isoformat().replace("+00:00", "Z")
        if rng.random() < 0.3:
            out.append(("annotation", {
                "schema": "surgflow.annotation/v1", "event_id": f"a-{seed}-{i}",
                "video_id": v.video_id, "annotator": "bench", "produced_at": at,
                "segments": segs}))
        else:
            out.append(("inference", {
                "schema": "surgflow.inference/v1", "event_id": f"m-{seed}-{i}",
                "video_id": v.video_id, "procedure": "cholecystectomy",
                "model": {"name": "bench", "version": 1}, "produced_at": at,
                "segments": [s | {"confidence": round(0.65 + rng.random() * 0.35, 3)}
                             for s in segs]}))
    return out


def _raw_consume(bootstrap: str, topics: list[str], expected: int, gc_paused: bool = False
                 ) -> float:
    import gc

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_poll_records=5000)
    tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    kept: list = []  # hold the records as a consumer that merges them must
    if gc_paused:
        gc.disable()
    t0 = time.perf_counter()
    while len(kept) < expected:
        for records in consumer.poll(timeout_ms=500).values():
            kept.extend(records)
    elapsed = time.perf_counter() - t0
    gc.enable()
    consumer.close(autocommit=False)
    return elapsed


def _raw_consume_python_crc(bootstrap: str, topics: list[str], expected: int) -> float:
    """:func:`_raw_consume` in a subprocess where kafka-python falls back to its pure-Python
    record checksum (``crc32c`` made unimportable before kafka is imported)."""
    code = ("import json, sys; sys.modules['crc32c'] = None; "
            "from bench.feedback import _raw_consume; "
            f"print(json.dumps(_raw_consume({bootstrap!r}, {topics!r}, {expected})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parent.parent)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=60000)
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--latency-samples", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3, help="--once measurements")
    ap.add_argument("--follow-repeats", type=int, default=3,
                    help="follow-mode measurements per consumer count")
    ap.add_argument("--consumers", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--max-seconds", type=float, default=0.2, help="latency measurement")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="surgflow-bench-"))
    os.environ["SURGFLOW_HOME"] = str(work / "home")
    os.environ["SURGFLOW_VIDEO_ROOTS"] = str(work)
    os.environ["SURGFLOW_TOPIC_PARTITIONS"] = str(args.partitions)
    os.environ.setdefault("SURGFLOW_TOPIC_PREFIX", f"bench{os.getpid()}.")

    from surgflow.config import get_settings
    from surgflow.data.synthetic import generate_corpus
    from surgflow.data.versions import DatasetStore
    from surgflow.feedback import broker
    from surgflow.feedback.client import Publisher
    from surgflow.feedback.consumer import FeedbackConsumer

    settings = get_settings()
    embedded = settings.kafka_bootstrap is None
    bootstrap = broker.bootstrap(settings)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    load_before = os.getloadavg()
    try:
        videos = generate_corpus(work / "videos", args.videos, seed=1, duration_s=8)
        with Publisher.from_settings(settings) as pub:
            for v in videos:
                pub.video({"schema": "surgflow.video/v1", "event_id": f"v-{v.video_id}",
                           "video_id": v.video_id, "uri": str(v.path),
                           "procedure": "cholecystectomy", "source": v.hospital})
            pub.flush()
        with FeedbackConsumer(settings) as consumer:
            consumer.run_once()  # register the videos; not part of the timing

        events = _label_events(videos, args.events, seed=2)
        with Publisher.from_settings(settings) as pub:
            for kind, e in events:
                pub.publish(kind, e)
            pub.flush()
        log(f"produced {len(events)} label events on {args.partitions} partitions")

        topics = [settings.topic("inference"), settings.topic("annotations")]
        raw = lambda: _raw_consume(bootstrap, topics, len(events))  # noqa: E731
        fresh = _homes(work, settings.home)
        raw_times, raw_nogc_times, raw_py_times, merge_times = [], [], [], []
        for rep in range(args.repeats):
            # Each repetition merges the same messages into a fresh copy of the home in which
            # only the videos are registered, so every run does the full work.
            home = fresh()
            raw_times.append(raw())
            raw_nogc_times.append(_raw_consume(bootstrap, topics, len(events), gc_paused=True))
            raw_py_times.append(_raw_consume_python_crc(bootstrap, topics, len(events)))
            with FeedbackConsumer(get_settings(home=home)) as consumer:
                t0 = time.perf_counter()
                report = consumer.run_once()
                merge_times.append(time.perf_counter() - t0)
            assert report.consumed == len(events), report.as_json()
            assert report.applied == len(events), report.as_json()
            log(f"run {rep}: raw {raw_times[-1]:.2f}s (python crc {raw_py_times[-1]:.2f}s), "
                f"merge {merge_times[-1]:.2f}s")
        once_fingerprint = DatasetStore(home).manifest(DATASET).fingerprint
        raw_rate, merge_rate = len(events) / min(raw_times), len(events) / min(merge_times)
        median_ratio = statistics.median(r / m for r, m in zip(raw_times, merge_times,
                                                                 strict=True))
        raw_py_s = statistics.median(raw_py_times)
        log(f"raw kafka-python: {raw_rate:,.0f} events/s ({len(events) / raw_py_s:,.0f}/s with "
            f"the python crc); surgflow merge: {merge_rate:,.0f}/s")

        runs: list[dict] = []
        for rep in range(args.follow_repeats):
            for n in args.consumers:
                raw_s = raw()
                raw_times.append(raw_s)
                run = _follow(fresh(), n, len(events), bootstrap)
                run |= {"raw_events_per_s": round(len(events) / raw_s),
                        "vs_raw": round(raw_s / run["seconds"], 3),
                        "after_join_vs_raw": round(raw_s / run["after_join_s"], 3),
                        "vs_raw_bound": round(raw_s / (run["join_s"] + raw_s), 3),
                        "vs_raw_python_crc": round(raw_py_s / run["seconds"], 3),
                        "vs_once": round(min(merge_times) / run["seconds"], 3),
                        "fingerprint_equal": run.pop("fingerprint") == once_fingerprint}
                log(f"follow, {n} consumer(s), run {rep}: {json.dumps(run)}")
                runs.append(run)
        follow = _follow_summary(runs, args.consumers)
        log(_follow_table(runs, args.consumers))

        settings = get_settings(home=home)  # everything consumed here: latency is per event
        latencies = _latency(settings, videos, args.latency_samples, args.max_seconds,
                             DatasetStore(settings.home), FeedbackConsumer, Publisher)
        result = {
            "events": len(events), "videos": args.videos, "partitions": args.partitions,
            "baseline": ("kafka-python KafkaConsumer raw consume of the same messages, C "
                         "checksum; raw_consume_python_crc: the same without crc32c"),
            "raw_consume_events_per_s": round(raw_rate),
            "merge_events_per_s": round(merge_rate),
            "merge_vs_raw_ratio": round(merge_rate / raw_rate, 3),
            "raw_consume_gc_paused_events_per_s": round(len(events) / min(raw_nogc_times)),
            "merge_vs_raw_gc_paused_ratio": round(min(raw_nogc_times) / min(merge_times), 3),
            "merge_vs_raw_ratio_median_of_pairs": round(median_ratio, 3),
            "raw_consume_python_crc_events_per_s": round(len(events) / raw_py_s),
            "merge_vs_raw_python_crc_ratio": round(raw_py_s / min(merge_times), 3),
            "repeats": args.repeats, "rates_are": "best of repeats",
            "target_ratio": 0.5,
            "follow": follow,
            "follow_latency_s": {
                "samples": len(latencies), "max_seconds": args.max_seconds,
                "p50": round(statistics.median(latencies), 3),
                "p95": round(sorted(latencies)[max(0, int(len(latencies) * 0.95) - 1)], 3),
            },
            "load_average_before_after": [round(load_before[0], 2),
                                          round(os.getloadavg()[0], 2)],
            "cpus": os.cpu_count(),
            "broker": "embedded tansu" if embedded else bootstrap,
        }
        print(json.dumps(result, indent=1))
    finally:
        if embedded:
            broker.stop(settings.home)
    shutil.rmtree(work, ignore_errors=True)  # kept when something failed: logs are there


def _homes(work: Path, base: Path):
    """A maker of fresh copies of ``base`` (videos registered, no label event merged)."""
    made = []

    def fresh() -> Path:
        home = work / f"home-{len(made)}"
        shutil.copytree(base, home)
        made.append(home)
        return home

    return fresh


def _follow(home: Path, consumers: int, expected: int, bootstrap: str) -> dict:
    """``consumers`` follow-mode processes in one new group until every event is merged."""
    from surgflow.data.versions import DatasetStore

    store = DatasetStore(home)
    base = store.manifest(DATASET).events_applied
    exe = shutil.which("surgflow", path=str(Path(sys.executable).parent)) or "surgflow"
    env = os.environ | {"SURGFLOW_HOME": str(home), "SURGFLOW_KAFKA_BOOTSTRAP": bootstrap}
    group = f"bench-{uuid.uuid4().hex[:8]}"
    logs = [home / f"follow-{i}.log" for i in range(consumers)]
    cpu_before = _children_cpu_s()
    started_wall, t0 = time.time(), time.perf_counter()
    with contextlib.ExitStack() as files:
        procs = [subprocess.Popen([exe, "feedback", "run", "--json", "--group", group],
                                  env=env, stdout=subprocess.PIPE, text=True,
                                  stderr=files.enter_context(open(log, "wb")))
                 for log in logs]
    try:
        while store.manifest(DATASET).events_applied < base + expected:
            if any(p.poll() is not None for p in procs) or (
                    time.perf_counter() - t0 > FOLLOW_TIMEOUT_S):
                raise RuntimeError(f"follow mode did not merge {expected} events; see {logs}")
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    reports = [json.loads(out) for out in outputs]
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    assert sum(r["applied"] for r in reports) == expected, reports
    text = [log.read_text() for log in logs]
    joined = min(_first_assignment(t) for t in text) - started_wall
    m = store.manifest(DATASET)
    return {
        "consumers": consumers, "seconds": round(seconds, 2),
        "events_per_s": round(expected / seconds), "join_s": round(joined, 2),
        "after_join_s": round(seconds - joined, 2),
        "after_join_events_per_s": round(expected / (seconds - joined)),
        "consumed": [r["consumed"] for r in reports], "versions": m.version - 1,
        **{k: sum(r[k] for r in reports) for k in ("lost_races", "carried", "rebuilt",
                                                   "rebalances", "revoked_records")},
        # summed over the consumers, so with several they exceed the wall time
        "time_s": {k: round(sum(r["time_s"][k] for r in reports), 2)
                   for k in reports[0]["time_s"]},
        "version_cost": _version_cost(text),
        "cpu_s": round(_children_cpu_s() - cpu_before, 1), "fingerprint": m.fingerprint,
    }


def _version_cost(logs: list[str]) -> dict:
    """Seconds each version cost its writer (merge + races + commit of its batch, from the
    consumers' batch log lines), in version order: the first and the last tenth's means."""
    cost: dict[int, float] = {}
    for text in logs:
        for line in text.splitlines():
            _, found, doc = line.partition(" batch: ")
            if not found:
                continue
            batch = json.loads(doc)
            t = batch["time_s"]
            for v in batch["versions_created"]:
                cost[v["version"]] = (t["merge"] + t["races"] + t["commit"]) / len(
                    batch["versions_created"])
    ordered = [cost[v] for v in sorted(cost)]
    tenth = max(1, len(ordered) // 10)
    first, last = statistics.mean(ordered[:tenth]), statistics.mean(ordered[-tenth:])
    return {"versions": len(ordered), "first_tenth_s": round(first, 3),
            "last_tenth_s": round(last, 3), "last_vs_first": round(last / first, 2)}


def _first_assignment(log_text: str) -> float:
    found = _ASSIGNED.search(log_text)
    if found is None:
        raise RuntimeError(f"a consumer never logged its partition assignment:\n{log_text}")
    stamp = time.mktime(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S"))
    return stamp + int(found.group(2)) / 1000


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _follow_summary(runs: list[dict], counts: list[int]) -> dict:
    """Per consumer count: the median, range and spread (max / min) of events/s over the runs;
    then each count against one consumer: the ratio of the medians, and the lowest ratio of
    the runs paired in order (run i of N consumers against run i of one)."""
    rates = {n: [r["events_per_s"] for r in runs if r["consumers"] == n] for n in counts}
    out: dict = {"runs": runs, "fingerprints_equal": all(r["fingerprint_equal"] for r in runs),
                 "target": ("3 consumers >= 1.25x 1 consumer (median of runs), never below "
                            "1.0; 1 consumer's spread < 1.5; last tenth of the versions <= "
                            "1.5x the first tenth's cost")}
    out["events_per_s"] = {
        str(n): {"median": round(statistics.median(v)), "min": min(v), "max": max(v),
                 "spread": round(max(v) / min(v), 2)} for n, v in rates.items()}
    out["version_cost_last_vs_first"] = {
        str(n): [r["version_cost"]["last_vs_first"] for r in runs if r["consumers"] == n]
        for n in counts}
    if 1 in rates:
        for n in counts:
            if n != 1:
                pairs = [a / b for a, b in zip(rates[n], rates[1], strict=False)]
                out[f"{n}_vs_1"] = round(statistics.median(rates[n])
                                         / statistics.median(rates[1]), 3)
                out[f"{n}_vs_1_lowest_pair"] = round(min(pairs), 3)
                after = {k: [r["after_join_events_per_s"] for r in runs if r["consumers"] == k]
                         for k in (1, n)}
                out[f"{n}_vs_1_after_join"] = round(statistics.median(after[n])
                                                    / statistics.median(after[1]), 3)
    return out


def _follow_table(runs: list[dict], counts: list[int]) -> str:
    """The follow-mode runs as a table: events/s per consumer count, each against one."""
    by = {n: [r for r in runs if r["consumers"] == n] for n in counts}
    head = ["run", *(f"{n} consumer{'s' if n > 1 else ''}" for n in counts),
            *(f"{n} / 1" for n in counts if n != 1 and 1 in by)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in range(max(len(v) for v in by.values())):
        row = [str(i + 1)]
        row += [f"{by[n][i]['events_per_s'] / 1000:.1f}k" if i < len(by[n]) else "" for n in counts]
        row += [f"{by[n][i]['events_per_s'] / by[1][i]['events_per_s']:.2f}"
                if i < len(by[n]) and i < len(by[1]) else ""
                for n in counts if n != 1 and 1 in by]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _latency(settings, videos, samples: int, max_seconds: float, store, consumer_cls,
             publisher_cls) -> list[float]:
    """Seconds from producing one annotation to the published version that contains it."""
    stop = threading.Event()
    consumer = consumer_cls(settings)
    thread = threading.Thread(target=consumer.follow, kwargs={
        "max_events": 500, "max_seconds": max_seconds, "stop": stop}, daemon=True)
    thread.start()
    out = []
    try:
        with publisher_cls.from_settings(settings) as pub:
            base = store.manifest(DATASET).events_applied
            for i in range(samples + 3):  # the first few include the group join
                v = videos[i % len(videos)]
                t0 = time.perf_counter()
                pub.annotation({
                    "schema": "surgflow.annotation/v1", "event_id": f"lat-{i}",
                    "video_id": v.video_id, "annotator": "bench",
                    "produced_at": datetime.now(UTC).isoformat(),
                    "segments": [{"start_frame": 0, "end_frame": 10, "label": LABELS[i % 7]}]})
                pub.flush()
                while store.manifest(DATASET).events_applied < base + i + 1:
                    time.sleep(0.005)
                if i >= 3:
                    out.append(time.perf_counter() - t0)
    finally:
        stop.set()
        thread.join(timeout=30)
        consumer.close()
    return out


if __name__ == "__main__":
    main()
