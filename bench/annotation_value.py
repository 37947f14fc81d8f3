"""Annotation value: field macro-F1 gained per labelled minute, feedback tasks chosen by the
model's uncertainty against random ranges of the same length.

The demo's loop on its synthetic hospitals (its sizes, its recipe, its review threshold), on the
library (no broker, no Prefect, no Dask), once per seed:

1. Hospitals A and B upload videos with full human labels; the product's merge
   (:class:`~surgflow.feedback.merge.BatchMerger`) makes dataset version 1 and v1 trains on it:
   the demo's recipe (the shipped tiny chain, human labels only) as the one rank of its job, in
   this process (:func:`surgflow.training.job.run_rank`), then exported as a chain bundle.
2. Hospital C uploads longer unlabelled videos. v1's ONNX chain runner analyses those to be
   annotated as the fleet does; the merge applies the inference events and raises the
   feedback tasks (segments whose confidence is below the threshold, SPEC §3, via
   ``tasks_for``). The annotation budget is the seconds of video those tasks cover.
3. Each arm starts from a copy of that home, has simulated annotators label its ranges with the
   ground truth, merges the annotations the same way, and trains v2 with v1's recipe and seed.
   C's validation-split videos are labelled whole in every arm (not counted in any budget), as
   the demo labels C's held-out videos, so v2's validation split holds the new hospital: without
   them the temporal stage's keep-best picks its epoch on A and B alone, where the encoder
   already scores 1.0, and keeps the untrained epoch 0 or not by chance, which swamps the
   difference between arms. The arms, per budget:

   - ``random`` (the baseline): as many ranges as the uncertainty arm, of the same lengths,
     placed uniformly at random on C's videos, none overlapping;
   - ``uncertainty``: the tasks as surgflow raises them today (budget ``tasks``); under a
     smaller budget (``--fractions`` of C's video) the least confident first, the last cut to
     fit, which is what a lower threshold would raise;
   - ``selected``: :func:`surgflow.feedback.selection.select` over the same inference events,
     the same seconds: short windows, uncertain ones and transitions first, spread over
     transitions, phases and videos;

   and a ``control`` with no ranges at all (C's validation videos only).
4. Field macro-F1 (:func:`surgflow.evaluation.metrics.evaluate`, as the gate scores) of v1, the
   control and every v2, through the ONNX chain runner, on C's test-split field videos with full
   ground truth, which are never registered (no split of any version holds them).

gain per labelled minute = (F1(v2) - F1(v1)) / (labelled seconds / 60); ratio = an arm's gain
per minute / random's (the same seconds, so the ratio of the gains); the final lines give the
median over seeds with min and max; "over the control" is the same ratio with F1(control) in
place of F1(v1). Goal: uncertainty ≥ 1.5× random.

    python -m bench.annotation_value [--seeds 3] [--size default] [--fractions 0.05 0.1]
                                     [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from surgflow.cli.local.demo import (
    FIRST_HOSPITALS,
    MODEL,
    NEW_HOSPITAL,
    PROCEDURE,
    REVIEW_BELOW,
    SIZES,
    DemoSize,
    demo_recipe,
    make_videos,
)
from surgflow.config import Settings, get_settings
from surgflow.data.synthetic import SyntheticVideo
from surgflow.feedback import simulation

GOAL = 1.5
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
ARMS = ("random", "uncertainty", "selected")

Range = tuple[str, int, int]  # (video_id, start_frame, end_frame)


# ---- the loop's steps -------------------------------------------------------------------------


class _Sender:
    """What the merge sends (dead letters, feedback tasks), kept instead of produced."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list) -> None:
        self.sent.append((topic, value))

    def flush(self) -> None:
        pass


class Stream:
    """The product's merge over messages as they would arrive on the topics, one batch a call."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.offsets: dict[str, int] = {}

    def merge(self, messages: list[tuple[str, dict]]) -> tuple[Any, list[dict]]:
        """Merge ``(topic, message)`` as one batch; the report and the feedback tasks it sent."""
        from surgflow.feedback.checkpoint import position_key
        from surgflow.feedback.merge import BatchMerger, Record

        records = []
        for topic, msg in messages:
            offset = self.offsets.get(topic, 0)
            self.offsets[topic] = offset + 1
            records.append(Record(topic, 0, offset, msg["video_id"].encode(),
                                  json.dumps(msg).encode()))
        positions = {position_key(self.settings.topic(t), 0): n for t, n in self.offsets.items()}
        sender = _Sender()
        report = BatchMerger(self.settings, sender).process(records, positions)
        dead = [v for t, v in sender.sent if t == "dlq"]
        if dead:
            raise RuntimeError(f"the merge dead-lettered {len(dead)} messages: {dead[0][:200]!r}")
        return report, [json.loads(v) for t, v in sender.sent if t == "feedback-tasks"]


def settings_for(home: Path, videos: Path, threshold: float) -> Settings:
    return get_settings(home=home, video_roots=[videos], feedback_confidence_threshold=threshold)


def recipe_for(size: DemoSize, out_dir: Path, seed: int, threads: int):
    """The demo's recipe, as one rank in this process, seeded."""
    from surgflow.training.recipe import load_recipe

    recipe = load_recipe(demo_recipe(size, out_dir))
    temporal = recipe.temporal.model_copy(
        update={"optim": recipe.temporal.optim.model_copy(update={"seed": seed})})
    return recipe.model_copy(update={
        "optim": recipe.optim.model_copy(update={"seed": seed}),
        "temporal": temporal,
        "resources": recipe.resources.model_copy(
            update={"world_size": 1, "threads_per_rank": threads}),
    })


def train(recipe: Any, home: Path, out: Path, threads: int) -> Path:
    """A run prepared as ``surgflow train`` prepares one, trained by the production rank function
    as the one rank of its job, exported as a chain bundle under ``out``; the bundle."""
    import torch

    from surgflow.export import bundle_from_run
    from surgflow.training.job import run_rank
    from surgflow.training.pipeline import prepare_run
    from surgflow.training.runs import RunStore

    os.environ["SURGFLOW_HOME"] = str(home)
    run_id = prepare_run(recipe, home)
    run_dir = RunStore(home).dir(run_id)
    job = {"run_dir": str(run_dir), "home": str(home), "threads": threads}
    before = torch.get_num_threads()
    try:
        run_rank(job, 0, 1, "", 0)  # no master address: a lone rank joins no process group
    finally:
        torch.set_num_threads(before)
    bundle_from_run(run_dir, out, home=home)
    return out


def runner_for(bundle: Path, threads: int):
    from surgflow.inference import ChainRunner

    return ChainRunner.load(bundle, providers=["CPUExecutionProvider"], intra_op_threads=threads)


def inference_messages(runner: Any, videos: list[SyntheticVideo], version: int) -> list[dict]:
    """What the fleet publishes for each video: the chain's timeline as segments (SPEC §3)."""
    from surgflow.serving.events import inference_event

    labels = list(runner.spec.labels)
    out = []
    for v in videos:
        segments = runner.analyze(v.path).timeline.segments(labels)
        out.append(inference_event(video_id=v.video_id, procedure=PROCEDURE, model_name=MODEL,
                                   version=version, segments=segments,
                                   produced_at=T0 + timedelta(hours=1)))
    return out


def field_f1(runner: Any, videos: list[SyntheticVideo]) -> dict[str, float]:
    """The chain's figures on fully labelled field videos, scored as the gate scores them."""
    from surgflow.data.taxonomy import CHOLEC80_PHASES
    from surgflow.evaluation.metrics import LabelledVideo, evaluate

    labels = list(CHOLEC80_PHASES)
    to_taxonomy = np.array([labels.index(lbl) for lbl in runner.spec.labels], dtype=np.int64)
    scored = []
    for v in videos:
        truth = np.full(v.num_frames, -1, dtype=np.int64)
        for s in v.segments:
            truth[s["start_frame"]:s["end_frame"]] = labels.index(s["label"])
        a = runner.analyze(v.path)
        pred = np.full(v.num_frames, -1, dtype=np.int64)
        n = min(a.num_frames, v.num_frames)
        pred[:n] = to_taxonomy[a.timeline.labels[:n]]
        scored.append(LabelledVideo(v.video_id, v.hospital, float(v.fps), truth, pred))
    summary = evaluate(scored, labels)["summary"]
    return {"macro_f1": summary["macro_f1"], "accuracy": summary["accuracy"],
            "relaxed_macro_f1": summary["relaxed_macro_f1"]}


# ---- the arms' ranges ------------------------------------------------------------------------


def random_ranges(lengths: list[int], videos: dict[str, int], rng: np.random.Generator
                  ) -> list[Range]:
    """Ranges of ``lengths`` frames placed uniformly at random over ``videos`` (id → frames),
    none overlapping another: the same labelling effort with no model's say in where.

    Each length goes to a video drawn in proportion to the room left in it; each video's
    ranges then come in a random order with its free frames split at random between them."""
    ids = sorted(videos)
    room = {v: videos[v] for v in ids}
    mine: dict[str, list[int]] = {v: [] for v in ids}
    for length in sorted(lengths, reverse=True):
        fits = [v for v in ids if room[v] >= length]
        if not fits:
            raise RuntimeError(f"no room left for a random range of {length} frames: the "
                               "tasks cover (nearly) all of C's video, so there is nothing to "
                               "choose; lower --threshold")
        weights = np.array([room[v] for v in fits], dtype=float)
        vid = fits[int(rng.choice(len(fits), p=weights / weights.sum()))]
        mine[vid].append(length)
        room[vid] -= length
    out: list[Range] = []
    for vid in ids:
        lens = [mine[vid][i] for i in rng.permutation(len(mine[vid]))]
        cuts = np.sort(rng.integers(0, room[vid] + 1, size=len(lens)))
        gaps = np.diff(np.r_[0, cuts])  # free frames before each range, in order
        cursor = 0
        for gap, length in zip(gaps, lens, strict=True):
            cursor += int(gap)
            out.append((vid, cursor, cursor + length))
            cursor += length
    return sorted(out)


def selected_ranges(inference: list[dict], videos: dict[str, SyntheticVideo], budget_s: float,
                    window_s: float | None = None) -> list[tuple[str, int, int, None]]:
    """The improved selection's ranges (:mod:`surgflow.feedback.selection`) within the budget."""
    from surgflow.feedback.schemas import InferenceEvent
    from surgflow.feedback.selection import select

    events = [InferenceEvent.model_validate(m) for m in inference]
    extra = {} if window_s is None else {"window_s": window_s}
    picked = select(events, budget_s, {v.video_id: float(v.fps) for v in videos.values()},
                    **extra)
    return [(p.video_id, p.start_frame, p.end_frame, None) for p in picked]


def annotations(videos: dict[str, SyntheticVideo], ranges: list[tuple[str, int, int, Any]],
                at: datetime) -> list[tuple[str, dict]]:
    """Simulated annotators' ground truth over each range (``task_id`` when it answers one)."""
    return [("annotations", simulation.annotation(videos[vid], "annotator-2", at, start, end,
                                                  task_id=tid))
            for vid, start, end, tid in ranges]


# ---- one seed --------------------------------------------------------------------------------


@dataclass
class Clock:
    started: float

    def log(self, seed: int, what: str) -> None:
        print(f"[seed {seed} {time.monotonic() - self.started:7.1f} s] {what}", file=sys.stderr,
              flush=True)


def run_seed(seed: int, size: DemoSize, root: Path, args: argparse.Namespace,
             clock: Clock) -> dict[str, Any]:
    root.mkdir(parents=True)
    vids = root / "videos"
    first = make_videos(vids, size.first, FIRST_HOSPITALS, size.first_duration_s, 10 * seed,
                        "case")
    new = make_videos(vids, {"train": size.new["train"]}, (NEW_HOSPITAL,),
                      size.new_duration_s, 10 * seed + 1, "case")
    qa = make_videos(vids, {"val": args.qa}, (NEW_HOSPITAL,), size.new_duration_s,
                     10 * seed + 2, "qa")
    field = make_videos(vids, {"test": args.field}, (NEW_HOSPITAL,), size.new_duration_s,
                        10 * seed + 3, "field")
    clock.log(seed, f"{len(first)} A/B videos; C: {len(new)} to annotate, {len(qa)} validation, "
                    f"{len(field)} field")

    home = root / "home"
    settings = settings_for(home, vids, args.threshold)
    stream = Stream(settings)
    stream.merge([("videos", simulation.video_event(v, PROCEDURE, T0)) for v in first]
                 + [("annotations", simulation.annotation(v, "annotator-1", T0))
                    for v in first])
    recipe = recipe_for(size, root / "recipes", seed, args.threads)
    v1 = runner_for(train(recipe, home, root / "bundle-v1", args.threads), args.threads)
    f1_v1 = field_f1(v1, field)
    clock.log(seed, f"v1 trained; field macro-F1 {f1_v1['macro_f1']:.3f}")

    stream.merge([("videos", simulation.video_event(v, PROCEDURE, T0 + timedelta(hours=1)))
                  for v in new + qa])
    inference = inference_messages(v1, new, 1)
    _, tasks = stream.merge([("inference", m) for m in inference])
    by_id = {v.video_id: v for v in new + qa}
    frames = {v.video_id: v.num_frames for v in new}
    fps = float(new[0].fps)  # one hospital, one frame rate: frames and seconds are one budget
    covered = sum(t["end_frame"] - t["start_frame"] for t in tasks)
    c_seconds = sum(frames.values()) / fps
    clock.log(seed, f"{len(tasks)} feedback tasks below {args.threshold}: {covered / fps:.0f} s "
                    f"of {c_seconds:.0f} s of C's video")
    if not tasks:
        raise RuntimeError(f"seed {seed}: v1 raised no feedback task; nothing to compare")
    # C's validation videos are labelled whole in every arm, as the demo labels C's held-out
    # videos: v2's validation split then holds the new hospital, as the demo's does
    qa_labels = [(v.video_id, 0, v.num_frames, None) for v in qa]

    def v2(tag: str, ranges: list[tuple[str, int, int, Any]]) -> dict[str, float]:
        arm_home = root / f"home-{tag}"
        shutil.copytree(home, arm_home)
        arm_stream = Stream(settings_for(arm_home, vids, args.threshold))
        arm_stream.offsets = dict(stream.offsets)
        arm_stream.merge(annotations(by_id, ranges + qa_labels, T0 + timedelta(hours=2)))
        runner = runner_for(train(recipe, arm_home, root / f"bundle-{tag}", args.threads),
                            args.threads)
        if not args.keep:
            shutil.rmtree(arm_home)
        return field_f1(runner, field)

    control = v2("control", [])
    clock.log(seed, f"control (C's validation videos only): field macro-F1 "
                    f"{control['macro_f1']:.3f}")
    out: dict[str, Any] = {"seed": seed, "v1": f1_v1, "control": control, "tasks": len(tasks),
                           "tasks_s": covered / fps, "c_seconds": c_seconds, "budgets": {}}
    budgets = [("tasks", None)] + [(f"{f:.0%} of C", f * c_seconds) for f in args.fractions]
    rng = np.random.default_rng(seed)
    for b, (name, budget_s) in enumerate(budgets):
        # uncertainty: the tasks as raised; under a smaller budget the least confident first,
        # the last cut to fit (what a lower threshold would raise)
        plain = ([(t["video_id"], t["start_frame"], t["end_frame"], t["task_id"]) for t in tasks]
                 if budget_s is None else lowest_confidence(tasks, round(budget_s * fps)))
        spent_s = sum(e - s for _, s, e, _ in plain) / fps
        arms = {
            "random": [(*r, None) for r in random_ranges([e - s for _, s, e, _ in plain],
                                                         frames, rng)],
            "uncertainty": plain,
            "selected": selected_ranges(inference, by_id, spent_s, args.window),
        }
        results: dict[str, Any] = {}
        for arm, ranges in arms.items():
            f1 = v2(f"{arm}-{b}", ranges)
            labelled_s = sum(e - s for _, s, e, _ in ranges) / fps
            gain = f1["macro_f1"] - f1_v1["macro_f1"]
            over = f1["macro_f1"] - control["macro_f1"]
            results[arm] = {"ranges": len(ranges), "labelled_s": labelled_s, "field": f1,
                            "gain": gain, "gain_per_min": gain / (labelled_s / 60),
                            "over_control_per_min": over / (labelled_s / 60),
                            "transitions": _transitions(by_id, ranges),
                            "videos": len({r[0] for r in ranges})}
            clock.log(seed, f"budget {name}, {arm}: {len(ranges)} ranges, {labelled_s:.0f} s "
                            f"labelled; field macro-F1 {f1['macro_f1']:.3f} (gain {gain:+.3f})")
        out["budgets"][name] = {"budget_s": spent_s, "arms": results}
    return out


def lowest_confidence(tasks: list[dict], budget: int) -> list[tuple[str, int, int, str]]:
    """Tasks in rising confidence until ``budget`` frames are spent, the last one cut to fit."""
    out = []
    for t in sorted(tasks, key=lambda t: (t["confidence"], t["video_id"], t["start_frame"])):
        if budget <= 0:
            break
        end = min(t["end_frame"], t["start_frame"] + budget)
        out.append((t["video_id"], t["start_frame"], end, t["task_id"]))
        budget -= end - t["start_frame"]
    return out


def _transitions(videos: dict[str, SyntheticVideo], ranges: list) -> int:
    """How many true phase transitions the ranges contain (a measure of what they show)."""
    n = 0
    for vid, start, end, _ in ranges:
        n += sum(1 for s in videos[vid].segments[1:] if start < s["start_frame"] < end)
    return n


# ---- the figures -----------------------------------------------------------------------------


def ratio(gain: float, baseline: float) -> float | None:
    """``gain / baseline``; None where the baseline gained nothing (no ratio means anything)."""
    return gain / baseline if baseline > 0 else None


def summary(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budget and arm: gains per labelled minute over the seeds, and ratios to random."""
    out: dict[str, Any] = {}
    for budget in seeds[0]["budgets"]:
        rows = [s["budgets"][budget]["arms"] for s in seeds]
        base = [r["random"]["gain_per_min"] for r in rows]
        out[budget] = {}
        for arm in ARMS:
            gains = [r[arm]["gain_per_min"] for r in rows]
            per_seed = [ratio(g, b) for g, b in zip(gains, base, strict=True)]
            known = [r for r in per_seed if r is not None]
            over = [ratio(r[arm]["over_control_per_min"], r["random"]["over_control_per_min"])
                    for r in rows]
            out[budget][arm] = {
                "gain_per_min": gains,
                "median_gain_per_min": statistics.median(gains),
                "ratio_per_seed": per_seed,
                "median_ratio": statistics.median(known) if known else None,
                "min_ratio": min(known) if known else None,
                "max_ratio": max(known) if known else None,
                "ratio_of_means": ratio(statistics.fmean(gains), statistics.fmean(base)),
                "over_control_ratio_per_seed": over,
            }
    return out


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def show(args: argparse.Namespace, seeds: list[dict[str, Any]], figures: dict[str, Any],
         wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, Console().width))
    table = Table(title=f"annotation value: field macro-F1 on C's held-out videos, size "
                        f"{args.size}, {len(seeds)} seeds, tasks below confidence "
                        f"{args.threshold}")
    for col in ("seed", "budget", "arm", "ranges", "videos", "true transitions", "labelled s",
                "field macro-F1 v1 → v2", "gain", "gain / labelled min", "ratio"):
        table.add_column(col)
    for s in seeds:
        c = s["control"]["macro_f1"]
        table.add_row(str(s["seed"]), "0", "control: C's validation videos only", "", "", "",
                      "0", f"{s['v1']['macro_f1']:.3f} → {c:.3f}",
                      f"{c - s['v1']['macro_f1']:+.3f}", "", "")
        for budget, b in s["budgets"].items():
            base = b["arms"]["random"]["gain_per_min"]
            for arm, a in b["arms"].items():
                r = "1.00 (baseline)" if arm == "random" else _f(ratio(a["gain_per_min"], base))
                table.add_row(str(s["seed"]), budget, arm, str(a["ranges"]), str(a["videos"]),
                              str(a["transitions"]), f"{a['labelled_s']:.0f}",
                              f"{s['v1']['macro_f1']:.3f} → {a['field']['macro_f1']:.3f}",
                              f"{a['gain']:+.3f}", f"{a['gain_per_min']:+.4f}", r)
        table.add_section()
    console.print(table)
    for s in seeds:
        console.print(f"seed {s['seed']}: {s['tasks']} tasks cover {s['tasks_s']:.0f} s of "
                      f"{s['c_seconds']:.0f} s of C's video")
    for budget, arms in figures.items():
        for arm in ("uncertainty", "selected"):
            fig = arms[arm]
            console.print(
                f"budget {budget}, {arm}: median gain/min {fig['median_gain_per_min']:+.4f} vs "
                f"random {arms['random']['median_gain_per_min']:+.4f}; ratio of mean gains "
                f"{_f(fig['ratio_of_means'])}; per-seed ratios "
                f"{', '.join(_f(r) for r in fig['ratio_per_seed'])}; over the control "
                f"{', '.join(_f(r) for r in fig['over_control_ratio_per_seed'])}")
    console.print(f"wall time {wall_s:.0f} s")
    for budget, arms in figures.items():
        for arm in ("uncertainty", "selected"):
            fig = arms[arm]
            met = fig["median_ratio"] is not None and fig["median_ratio"] >= GOAL
            print(f"annotation value ({budget}): {arm} / random = {_f(fig['median_ratio'])} "
                  f"(min {_f(fig['min_ratio'])}, max {_f(fig['max_ratio'])} over {len(seeds)} "
                  f"seeds; goal ≥ {GOAL}: {'met' if met else 'not met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (0, 1, …)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="the demo's sizes: videos per split, lengths, epochs")
    parser.add_argument("--threshold", type=float, default=REVIEW_BELOW,
                        help="feedback tasks below this confidence (the demo's)")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.05, 0.1],
                        help="also compare at these fractions of C's video (the plain arm: "
                             "least confident tasks first)")
    parser.add_argument("--field", type=int, default=6,
                        help="C's field videos (test split, never in the dataset)")
    parser.add_argument("--qa", type=int, default=2,
                        help="C's validation videos, labelled whole in every arm")
    parser.add_argument("--window", type=float, help="the selection's window_s")
    parser.add_argument("--threads", type=int, default=1, help="torch/onnxruntime threads")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the homes and videos")
    args = parser.parse_args()

    size = SIZES[args.size]
    started = time.monotonic()
    clock = Clock(started)
    tmp = Path(tempfile.mkdtemp(prefix="bench-annotation-"))
    os.environ["SURGFLOW_VIDEO_ROOTS"] = str(tmp)
    try:
        seeds = [run_seed(s, size, tmp / f"seed-{s}", args, clock)
                 for s in range(args.first_seed, args.first_seed + args.seeds)]
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    wall_s = time.monotonic() - started
    figures = summary(seeds)
    show(args, seeds, figures, wall_s)
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "threshold": args.threshold,
                                         "goal": GOAL, "seeds": seeds, "figures": figures,
                                         "wall_s": wall_s}, indent=1))


if __name__ == "__main__":
    main()
