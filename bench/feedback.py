"""Feedback-loop benchmark: merge throughput vs raw Kafka consumption, and follow-mode latency.

Run: ``.venv/bin/python bench/feedback.py [--events 20000] [--latency-samples 30]``

1. Throughput. N inference/annotation events for registered videos are produced once. The
   baseline is kafka-python reading the same N messages raw (assign, seek to beginning, poll
   until all are in). surgflow's number is ``FeedbackConsumer.run_once`` over them: consume,
   validate (JSON + schema + taxonomy + range), merge, and commit the new dataset version.
   Ratio = surgflow events/s / raw events/s (target >= 0.5). Both are repeated (interleaved,
   each merge into a fresh copy of the home) and the best of each is reported, with the median
   of the per-pair ratios, since a shared machine makes single runs noisy. surgflow pauses the
   cyclic garbage collector while it reads and merges a batch, so a stricter second baseline
   reads raw with the collector paused too.
2. Latency. A follow-mode consumer (``max_seconds`` = 0.2) runs in this process; annotations are
   produced one at a time and timed until the dataset version that contains each is published.

Everything runs on the embedded broker in a temporary SURGFLOW_HOME (or the broker named by
SURGFLOW_KAFKA_BOOTSTRAP). Prints one JSON document at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

LABELS = ("Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection",
          "GallbladderPackaging", "CleaningCoagulation", "GallbladderRetraction")
T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--latency-samples", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=0.2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="surgflow-bench-"))
    os.environ["SURGFLOW_HOME"] = str(work / "home")
    os.environ["SURGFLOW_VIDEO_ROOTS"] = str(work)
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
        log(f"produced {len(events)} label events")

        topics = [settings.topic("inference"), settings.topic("annotations")]
        raw_times, raw_nogc_times, merge_times = [], [], []
        for rep in range(args.repeats):
            # Each repetition merges the same messages into a fresh copy of the home in which
            # only the videos are registered, so every run does the full work.
            home = work / f"home-{rep}"
            shutil.copytree(settings.home, home)
            raw_times.append(_raw_consume(bootstrap, topics, len(events)))
            raw_nogc_times.append(_raw_consume(bootstrap, topics, len(events), gc_paused=True))
            with FeedbackConsumer(get_settings(home=home)) as consumer:
                t0 = time.perf_counter()
                report = consumer.run_once()
                merge_times.append(time.perf_counter() - t0)
            assert report.consumed == len(events), report.as_json()
            assert report.applied == len(events), report.as_json()
            log(f"run {rep}: raw {raw_times[-1]:.2f}s, merge {merge_times[-1]:.2f}s")
        raw_rate, merge_rate = len(events) / min(raw_times), len(events) / min(merge_times)
        median_ratio = statistics.median(r / m for r, m in zip(raw_times, merge_times,
                                                                 strict=True))
        log(f"raw kafka-python: {raw_rate:,.0f} events/s; surgflow merge: {merge_rate:,.0f}/s")

        settings = get_settings(home=home)  # everything consumed here: latency is per event
        latencies = _latency(settings, videos, args.latency_samples, args.max_seconds,
                             DatasetStore(settings.home), FeedbackConsumer, Publisher)
        result = {
            "events": len(events),
            "baseline": "kafka-python KafkaConsumer raw consume of the same messages",
            "raw_consume_events_per_s": round(raw_rate),
            "merge_events_per_s": round(merge_rate),
            "merge_vs_raw_ratio": round(merge_rate / raw_rate, 3),
            "raw_consume_gc_paused_events_per_s": round(len(events) / min(raw_nogc_times)),
            "merge_vs_raw_gc_paused_ratio": round(min(raw_nogc_times) / min(merge_times), 3),
            "merge_vs_raw_ratio_median_of_pairs": round(median_ratio, 3),
            "repeats": args.repeats, "rates_are": "best of repeats",
            "target_ratio": 0.5,
            "follow_latency_s": {
                "samples": len(latencies), "max_seconds": args.max_seconds,
                "p50": round(statistics.median(latencies), 3),
                "p95": round(sorted(latencies)[max(0, int(len(latencies) * 0.95) - 1)], 3),
            },
            "broker": "embedded tansu" if embedded else bootstrap,
        }
        print(json.dumps(result, indent=1))
    finally:
        if embedded:
            broker.stop(settings.home)


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
            base = store.manifest("cholecystectomy").events_applied
            for i in range(samples + 3):  # the first few include the group join
                v = videos[i % len(videos)]
                t0 = time.perf_counter()
                pub.annotation({
                    "schema": "surgflow.annotation/v1", "event_id": f"lat-{i}",
                    "video_id": v.video_id, "annotator": "bench",
                    "produced_at": datetime.now(UTC).isoformat(),
                    "segments": [{"start_frame": 0, "end_frame": 10, "label": LABELS[i % 7]}]})
                pub.flush()
                while store.manifest("cholecystectomy").events_applied < base + i + 1:
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
