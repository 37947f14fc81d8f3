"""The demo: the whole loop, closed, on the embedded default, on one laptop, no GPU.

1. Hospitals A and B upload synthetic surgical videos, which open, close and now and then
   pause outside the body, with annotators' labels of the phases and of the privacy track
   (Kafka ``videos``, ``annotations``); the feedback flow merges them into dataset version 1
   and privacy-track version 1, both pinned as field suites. Their version events cross the
   new-source triggers of the demo's two recipes, and the served deployments train by
   themselves the phase chain v1 and the out-of-body detector: DDP on the Dask cluster, ONNX
   export, parity, the gate (a first model: minimums, and the detector's privacy checks),
   promotion to production. The privacy-screen deployment then screens every video.
2. The inference service (fleet mode) analyses hospital C's longer videos with v1 and publishes
   its outputs (``inference``); the feedback flow merges them and raises feedback tasks for the
   low-confidence segments. The drift watch compares C's videos, as v1 sees them, with v1's
   own training view: they have drifted, before any label of theirs exists, and the recipe's
   drift trigger fires; its pipeline trains nothing, since no label arrived to learn from.
3. Once the detector has screened C's videos, the annotation sync sends the tasks to Label
   Studio with redacted media (every frame within a second of an out-of-body range black);
   before, they wait. Simulated annotators sign in there and
   answer them as their browsers would, and their answers come back through the annotations
   topic; the field team labels C's held-out videos; the merged version is
   pinned as the new field suite and crosses the new-source trigger again (hospital C), which
   starts v2's pipeline by itself; v2 is gated against v1 and promoted only if it passes; the
   service hot-swaps to it. Last, C's people media are decoded frame by frame against the
   ground truth: every out-of-body frame must be black.

The demo drives only what outside parties would do (uploads, annotations, pinning the field
suite) and waits for the system to do the rest. Everything it starts is recorded as a stack
(:mod:`surgflow.cli.local.stack`) and stopped at the end unless ``keep_running``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from surgflow.config import Settings
from surgflow.data.privacy import PRIVACY, PRIVACY_MODEL
from surgflow.data.splits import ids_filling_splits, split_of
from surgflow.data.synthetic import SyntheticVideo, generate_video
from surgflow.errors import SurgflowError
from surgflow.feedback import simulation
from surgflow.feedback.client import Publisher

PROCEDURE = "cholecystectomy"
MODEL = f"{PROCEDURE}-phase"
DETECTOR = PRIVACY_MODEL
FIRST_HOSPITALS = ("hospital-a", "hospital-b")
NEW_HOSPITAL = "hospital-c"
REVIEW_BELOW = 0.85
#: the demo recipe's drift rule (hospital C's darker, noisier camera is far above it)
DRIFT_PSI = 0.5
#: a decoded frame whose brightest pixel is at most this is black (H.264 keeps black exact
#: to within a level or two)
BLACK = 2


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: videos per split, their lengths, the training epochs."""

    first: dict[str, int]
    first_duration_s: float
    new: dict[str, int]
    new_duration_s: float
    clip_epochs: int
    temporal_epochs: int
    timeout_s: float


SIZES = {
    "small": DemoSize({"train": 4, "val": 2, "test": 2}, 24, {"train": 2, "val": 1, "test": 1},
                      60, 3, 10, 900),
    "default": DemoSize({"train": 6, "val": 2, "test": 2}, 40,
                        {"train": 4, "val": 1, "test": 2}, 240, 4, 15, 1500),
    "large": DemoSize({"train": 12, "val": 4, "test": 4}, 90,
                      {"train": 8, "val": 2, "test": 3}, 600, 8, 30, 5400),
}


@dataclass
class DemoReport:
    """What the demo did, step by step (the CLI renders it)."""

    size: str
    home: str
    log: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    firings: list[dict[str, Any]] = field(default_factory=list)
    field_by_source: dict[str, dict[str, float | None]] = field(default_factory=dict)
    report_path: str | None = None
    highlights: str | None = None
    privacy: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    served: dict[str, Any] | None = None
    annotation: dict[str, int] | None = None
    urls: dict[str, Any] | None = None
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


Step = Callable[[str], Any]  # a context manager factory: with step("doing x"): ...


def demo_recipe(size: DemoSize, out_dir: Path) -> Path:
    """The shipped tiny recipe, sized for this demo, retraining on new sources and growth."""
    from surgflow.recipes import recipe_path

    data = yaml.safe_load(recipe_path("tiny").read_text())
    data["name"] = "cholec-demo"
    data["description"] = "demo: tiny frame encoder → causal MS-TCN, retrained on new hospitals"
    data["data"]["min_confidence"] = None  # human labels only: a source appears when labelled
    data["optim"]["epochs"] = size.clip_epochs
    data["temporal"]["optim"]["epochs"] = size.temporal_epochs
    data["triggers"] = {"new_source": True, "growth_factor": 2.0,
                        "drift": {"psi_above": DRIFT_PSI,
                                  "min_videos": min(5, sum(size.new.values()))}}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cholec-demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    detector = yaml.safe_load(recipe_path("privacy-tiny").read_text())
    detector["name"] = "privacy-demo"
    detector["triggers"] = {"new_source": True}
    (out_dir / "privacy-demo.yaml").write_text(yaml.safe_dump(detector, sort_keys=False))
    return path


def make_videos(out_dir: Path, per_split: dict[str, int], hospitals: tuple[str, ...],
                duration_s: float, seed: int, tag: str) -> list[SyntheticVideo]:
    picked = ids_filling_splits(
        per_split, lambda i: f"{hospitals[i % len(hospitals)]}-{tag}-{seed:02d}{i:04d}")
    return [generate_video(out_dir / f"{vid}.mp4", seed=seed * 10_007 + i + len(tag),
                           duration_s=duration_s, hospital=hospitals[i % len(hospitals)],
                           width=160, height=128, out_of_body=True)
            for i, vid in picked]


def publish_uploads(settings: Settings, videos: list[SyntheticVideo], annotate: bool,
                    at: datetime) -> None:
    with Publisher.from_settings(settings) as pub:
        for v in videos:
            pub.video(simulation.video_event(v, PROCEDURE, recorded_at=at))
            if annotate:
                pub.annotation(simulation.annotation(v, "annotator-1", at + timedelta(minutes=5),
                                                     privacy=True))
        pub.flush()


def tasks_in_label_studio(settings: Settings, video_ids: set[str]) -> dict[str, Any] | None:
    """The Label Studio project once it holds every open feedback task of ``video_ids`` that
    a person can see something of (the annotation-sync deployment sends them when their
    videos are cleared; a task whose whole range is blacked out is never sent)."""
    from surgflow.annotation.labelstudio import LabelStudio
    from surgflow.annotation.server import endpoint
    from surgflow.data.privacy import clearance
    from surgflow.data.ranges import covers
    from surgflow.data.registry import VideoRegistry
    from surgflow.feedback.tasks import TaskLedger
    from surgflow.serving.screening import privacy_policy

    registry = VideoRegistry(settings.home, settings.resolved_video_roots())
    policy = privacy_policy(settings)
    black = {v: clearance(settings.home, registry.get(v), policy).blackout for v in video_ids}
    tasks = [t for t in TaskLedger(settings.home).list()
             if t["status"] == "open" and t["video_id"] in video_ids]
    wanted = {t["task_id"] for t in tasks
              if not covers(black[t["video_id"]], t["start_frame"], t["end_frame"])}
    with LabelStudio(endpoint(settings, start_embedded=False)) as ls:
        project = ls.find_project(PROCEDURE)
        if project is None:
            return None
        held = {t["data"].get("surgflow_task_id") for t in ls.tasks(int(project["id"]))}
    return ({"project": int(project["id"]), "sent": len(wanted),
             "out_of_body": len(tasks) - len(wanted)} if wanted <= held else None)


def answer_in_label_studio(settings: Settings, videos: list[SyntheticVideo],
                           project: int) -> int:
    """Annotators sign in to Label Studio and answer every open task there with the truth of
    its range, through the same HTTP calls as their browsers; returns how many they answered."""
    from surgflow.annotation.people import BrowserSession
    from surgflow.annotation.server import endpoint
    from surgflow.annotation.timeline import ls_result, media_of

    by_id = {v.video_id: v for v in videos}
    ep = endpoint(settings, start_embedded=False)
    person = BrowserSession(ep.url, "annotator-2@surgflow.local", "demo-annotator-2")
    answered = 0
    try:
        for task in person.tasks(project):
            data = task["data"]
            if task.get("annotations") or data.get("video_id") not in by_id:
                continue
            truth = simulation.annotation(by_id[data["video_id"]], "annotator-2",
                                          datetime.now(UTC), data["start_frame"],
                                          data["end_frame"])
            segments = [(s["start_frame"], s["end_frame"], s["label"])
                        for s in truth["segments"]]
            person.submit(task["id"], ls_result(segments, media_of(data)))
            answered += 1
    finally:
        person.close()
    return answered


def label_held_out(settings: Settings, videos: list[SyntheticVideo], held_out: set[str]) -> None:
    """The field team labels the held-out videos completely (the next field suite)."""
    by_id = {v.video_id: v for v in videos}
    at = datetime.now(UTC)
    with Publisher.from_settings(settings) as pub:
        for vid in sorted(held_out):
            pub.annotation(simulation.annotation(by_id[vid], "annotator-qa", at))
        pub.flush()


def returned_annotations(settings: Settings, count: int) -> bool:
    """Whether ``count`` annotation events from Label Studio are on the annotations topic."""
    from surgflow.feedback import broker, dlq

    topic = settings.topic("annotations")
    ids = {json.loads(r.value).get("event_id", "") for r in
           dlq.read_records(broker.bootstrap(settings), topic) if r.value}
    return sum(1 for i in ids if i.startswith("ls-")) >= count


def wait_for(what: str, check: Callable[[], Any], timeout_s: float,
             every_s: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SurgflowError(f"demo: timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def sealed(version: int, name: str = MODEL) -> Callable[[], dict | None]:
    def check() -> dict | None:
        from surgflow.registry import ModelRegistry

        reg = ModelRegistry()
        try:
            return reg.seal(name, version)
        except SurgflowError:
            return None

    return check


def production(name: str = MODEL) -> int | None:
    from surgflow.registry import ModelRegistry

    try:
        return ModelRegistry().production(name)
    except SurgflowError:
        return None


def cleared(settings: Settings, video_ids: set[str]) -> bool:
    """Whether every one of ``video_ids`` is registered and cleared for people."""
    from surgflow.data.privacy import clearance
    from surgflow.data.registry import VideoRegistry
    from surgflow.serving.screening import privacy_policy

    registry = VideoRegistry(settings.home, settings.resolved_video_roots())
    policy = privacy_policy(settings)
    records = [registry.find(v) for v in sorted(video_ids)]
    return all(r is not None and clearance(settings.home, r, policy).cleared for r in records)


def check_redaction(settings: Settings, videos: list[SyntheticVideo]) -> dict[str, Any]:
    """Decode each video's people media and compare it, frame by frame, with the ground truth:
    every out-of-body frame must be black. Returns the counts and the in-body share lost."""
    import av
    import numpy as np

    from surgflow.data.media import prepare_for_people
    from surgflow.data.registry import VideoRegistry
    from surgflow.serving.screening import privacy_policy

    registry = VideoRegistry(settings.home, settings.resolved_video_roots())
    policy = privacy_policy(settings)
    out_frames = out_black = in_frames = in_black = 0
    black_s = 0.0
    for v in videos:
        truth = v.out_of_body()
        media = prepare_for_people(settings.home, registry.get(v.video_id), policy)
        with av.open(media.path) as f:
            black = np.array([int(fr.to_ndarray(format="gray").max()) <= BLACK
                              for fr in f.decode(video=0)])
        n = min(len(black), len(truth))
        t, b = truth[:n], black[:n]
        out_frames, out_black = out_frames + int(t.sum()), out_black + int((t & b).sum())
        in_frames, in_black = in_frames + int((~t).sum()), in_black + int((~t & b).sum())
        black_s += float(b.sum()) / v.fps
    return {"videos": len(videos), "detector": policy.detector, "blacked_out_s": black_s,
            "out_of_body_frames": out_frames, "out_of_body_black": out_black,
            "in_body_frames": in_frames, "in_body_lost": in_black,
            "in_body_lost_share": in_black / in_frames if in_frames else 0.0}


def drift_firing(settings: Settings, recipe: str, source: str) -> dict[str, Any] | None:
    """The recipe's drift firing for ``source``, once the drift watch has fired it."""
    from surgflow.training.triggers import TriggerLedger

    return next((f for f in TriggerLedger(settings.home).firings(recipe)
                 if "drift" in f["reasons"] and f["drift"]["source"] == source), None)


#: Prefect state types a flow run does not leave
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def drift_retrain(api: str, recipe: str) -> dict[str, Any] | None:
    """The recipe's pipeline run that a drift firing started, once it has finished, with the
    line its log says why it trained nothing (None: it trained)."""
    from surgflow.registry.periodic import recipe_deployment
    from surgflow.training.triggers import drift_caused

    try:
        runs = httpx.post(f"{api}/flow_runs/filter", timeout=5, json={
            "deployments": {"name": {"any_": [recipe_deployment(recipe)]}}}).json()
        run = next((r for r in runs if drift_caused((r.get("parameters") or {}).get("cause"))
                    and r["state_type"] in FINAL), None)
        if run is None:
            return None
        logs = httpx.post(f"{api}/logs/filter", timeout=5, json={
            "logs": {"flow_run_id": {"any_": [run["id"]]}}}).json()
    except (httpx.HTTPError, ValueError):
        return None
    skipped = next((g["message"].removeprefix(f"{recipe}: ") for g in logs
                    if "nothing new to train from" in g["message"]), None)
    return {"state": run["state_type"], "skipped": skipped}


def served_version(url: str) -> int | None:
    try:
        models = httpx.get(f"{url}/v1/models", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    entry = models.get(PROCEDURE) if isinstance(models, dict) else None
    return entry.get("version") if isinstance(entry, dict) else None


def inference_published(settings: Settings, video_ids: set[str]) -> bool:
    """Whether the ``inference`` topic holds an event for every one of ``video_ids``."""
    from surgflow.feedback import broker, dlq

    topic = settings.topic("inference")
    keys = {r.key.decode() for r in dlq.read_records(broker.bootstrap(settings), topic)
            if r.key}
    return video_ids <= keys


def run_demo(settings: Settings, size_name: str, step: Step, *, seed: int = 0,
             keep_running: bool = False, log_path: Path) -> DemoReport:
    """Run the loop (see the module docstring); ``step(text)`` wraps each stage."""
    from surgflow.cli.local.stack import Stack, down
    from surgflow.data.pins import pin
    from surgflow.data.privacy import ScreeningLedger
    from surgflow.data.versions import DatasetStore
    from surgflow.evaluation.gate import report_of
    from surgflow.feedback.tasks import TaskLedger
    from surgflow.registry import ModelRegistry
    from surgflow.training.triggers import TriggerLedger
    from surgflow_flows.deployments import trigger_names
    from surgflow_flows.feedback import feedback_flow
    from surgflow_flows.pipeline import ensure_gpu_limit

    size = SIZES[size_name]
    # annotators review every segment the model is less than 85 % sure of (this process runs
    # the feedback flow, which reads the threshold from the settings)
    os.environ.setdefault("SURGFLOW_FEEDBACK_CONFIDENCE_THRESHOLD", str(REVIEW_BELOW))
    started = time.monotonic()
    home = settings.home
    report = DemoReport(size=size_name, home=str(home), log=str(log_path))
    root = home / "demo"
    recipes = root / "recipes"
    shutil.rmtree(recipes, ignore_errors=True)
    demo_recipe(size, recipes)
    stack = Stack(settings)
    stack.check_not_running()
    t0 = datetime.now(UTC) - timedelta(hours=2)
    try:
        with step("starting Prefect, Kafka, Dask, MLflow, Label Studio, the deployments"):
            stack.start_core()
            label_studio = stack.start_label_studio()
            ensure_gpu_limit(1)
            stack.start_dask(2)
            stack.start_mlflow_ui(wait=False)
            bridge = stack.start_annotation_bridge()
            deployments = stack.start_deployments(recipes)
        with step(f"hospitals A and B upload {sum(size.first.values())} annotated videos"):
            first = make_videos(root / "videos", size.first, FIRST_HOSPITALS,
                                size.first_duration_s, seed, "case")
            publish_uploads(settings, first, annotate=True, at=t0)
        with step("feedback flow merges them; the version is pinned as the field suite"):
            # its version event must find the served deployments' triggers registered
            stack.wait_triggers(deployments, trigger_names(recipes))
            run1 = feedback_flow(once=True)
            store = DatasetStore(home)
            pin(home, PROCEDURE, store.latest_version(PROCEDURE))
            pin(home, PRIVACY, store.latest_version(PRIVACY))
        report.steps.append({"step": "feedback", "result": run1})
        with step("new sources → the triggers train, gate and promote v1 and the out-of-body "
                  "detector by themselves"):
            seal1 = wait_for("v1's seal", sealed(1), size.timeout_s)
            if seal1["verdict"] != "approved":
                raise SurgflowError(f"demo: v1 was rejected: {_failing(seal1)}")
            wait_for("v1 in production", lambda: production() == 1, 120)
            detector = wait_for("the detector's seal", sealed(1, DETECTOR), size.timeout_s)
            if detector["verdict"] != "approved":
                raise SurgflowError(f"demo: the out-of-body detector was rejected: "
                                    f"{_failing(detector)}")
            wait_for("the detector in production", lambda: production(DETECTOR) == 1, 120)
        with step("the inference service starts in fleet mode with v1"):
            svc = stack.start_service(consume=True)
            wait_for("the service to load v1", lambda: served_version(svc.url) == 1, 180)
        new = make_videos(root / "videos", size.new, (NEW_HOSPITAL,), size.new_duration_s,
                          seed + 1, "case")
        minutes = size.new_duration_s / 60
        with step(f"hospital C uploads {len(new)} videos of {minutes:.0f} min; the fleet "
                  "analyses them with v1"):
            publish_uploads(settings, new, annotate=False, at=t0 + timedelta(hours=1))
            wait_for("the fleet's inference events",
                     lambda: inference_published(settings, {v.video_id for v in new}),
                     size.timeout_s)
        with step("feedback flow merges the model's outputs and raises feedback tasks"):
            run2 = feedback_flow(once=True)
        report.steps.append({"step": "feedback", "result": run2})
        with step("drift watch: C's videos drift from v1's training view (no label of C yet)"):
            drifted = wait_for("the drift trigger's firing for hospital C", lambda: drift_firing(
                settings, "cholec-demo", NEW_HOSPITAL), 240)
            retrain = wait_for("the pipeline the drift firing started", lambda: drift_retrain(
                stack.state["prefect_api_url"], "cholec-demo"), 300)
            if retrain["state"] != "COMPLETED" or retrain["skipped"] is None:
                raise SurgflowError(f"demo: the drift retrain should train nothing without new "
                                    f"labels, but it ended {retrain}")
        report.drift = {"why": drifted["why"], "retrain": retrain["skipped"]}
        held_out = {v.video_id for v in new if split_of(v.video_id) != "train"}
        with step("the detector screens hospital C's videos; until then no task is sent"):
            wait_for("C's videos cleared for people",
                     lambda: cleared(settings, {v.video_id for v in new}), size.timeout_s)
        with step("the annotation sync sends the tasks to Label Studio, redacted"):
            stack.wait_label_studio(label_studio)
            stack.wait_http(bridge, "/healthz")
            sent = wait_for("the feedback tasks in Label Studio", lambda: tasks_in_label_studio(
                settings, {v.video_id for v in new}), 300)
        with step("annotators answer them there; C's held-out videos are labelled"):
            answered = answer_in_label_studio(settings, new, sent["project"])
            wait_for("the annotators' answers on the annotations topic",
                     lambda: returned_annotations(settings, answered), 180)
            label_held_out(settings, new, held_out)
            run3 = feedback_flow(once=True)
            pin(home, PROCEDURE, DatasetStore(home).latest_version(PROCEDURE))
        merged = sum(1 for t in TaskLedger(home).list()
                     if t["status"] == "completed" and t["completed_by"].startswith("ls-"))
        report.annotation = {"sent": sent["sent"], "answered": answered, "merged": merged,
                             "out_of_body": sent["out_of_body"]}
        report.steps.append({"step": "annotate", "answered": answered, "result": run3})
        with step("hospital C is a new source → the trigger starts v2's pipeline by itself"):
            seal2 = wait_for("v2's seal", sealed(2), size.timeout_s)
        if seal2["verdict"] == "approved":
            with step("v2 approved against v1 → promoted; the service hot-swaps to it"):
                wait_for("v2 in production", lambda: production() == 2, 120)
                wait_for("the service to swap to v2", lambda: served_version(svc.url) == 2, 180)
        report.served = httpx.get(f"{svc.url}/v1/models", timeout=5).json()
        with step("highlight reel of one of hospital C's videos"):
            report.highlights = _highlights(settings, root, sorted(held_out)[0])
        with step("C's people media checked frame by frame: every out-of-body frame black"):
            screenings = [(v, s) for v in first + new
                          for s in ScreeningLedger(home).of_video(v.video_id)
                          if s.status == "screened"]
            report.privacy = check_redaction(settings, new) | {
                "videos_screened": len({v.video_id for v, _ in screenings}),
                "screened_s": sum(s.out_of_body_frames / v.fps for v, s in screenings)}
            if report.privacy["out_of_body_black"] != report.privacy["out_of_body_frames"]:
                raise SurgflowError(f"demo: out-of-body frames reached people media: "
                                    f"{report.privacy}")
        registry = ModelRegistry()
        report.models = [registry.get(MODEL, v).model_dump(mode="json") for v in (1, 2)] + [
            registry.get(DETECTOR, 1).model_dump(mode="json")]
        found = report_of(registry, MODEL, 2, seal2)
        report.report_path = str(found) if found else None
        report.versions = [m.summary() | {"sources": dict(m.sources)}
                           for m in DatasetStore(home).versions(PROCEDURE)]
        report.firings = TriggerLedger(home).all()
        report.field_by_source = by_source(seal2)
        if keep_running:
            report.urls = stack.urls()
    finally:
        if not keep_running:
            down(home)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def by_source(seal: dict[str, Any], metric: str = "macro_f1") -> dict[str, dict]:
    """Per hospital, the field metric of the candidate and of its baseline, from a seal's
    per-source checks (``<metric>.source.<source>``)."""
    prefix = f"{metric}.source."
    return {c["name"].removeprefix(prefix): {"candidate": c["value"], "baseline": c["baseline"]}
            for c in seal.get("checks", []) if c["name"].startswith(prefix)}


def _failing(seal: dict[str, Any]) -> str:
    return "; ".join(c["reason"] for c in seal.get("checks", []) if not c["passed"])


def _highlights(settings: Settings, root: Path, video_id: str) -> str:
    from surgflow.serving.highlights import make_highlights

    out = root / "highlights" / f"{video_id}.mp4"
    return str(make_highlights(settings, video_id, out)["out"])
