"""The demo: the whole loop end to end on the embedded default, on one laptop, no GPU.

1. a hospital uploads synthetic surgical videos (Kafka ``videos``);
2. the production model's outputs arrive (``inference``), annotators label some videos fully
   (``annotations``);
3. the feedback flow merges them into dataset version 1 and raises feedback tasks for the
   model's low-confidence segments (``feedback-tasks``);
4. annotators answer those tasks; the feedback flow makes version 2;
5. the training flow trains the demo recipe on version 2 with DDP on a local Dask cluster.

Thin over the library; each step is one task.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, task
from pydantic import BaseModel, Field

from flows.feedback import feedback_flow
from flows.training import TrainingParams, training_flow
from surgflow.config import get_settings
from surgflow.data.splits import ids_filling_splits
from surgflow.data.synthetic import SyntheticVideo, generate_video
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.data.versions import DatasetStore
from surgflow.feedback import simulation
from surgflow.feedback.client import Publisher
from surgflow.feedback.tasks import TaskLedger
from surgflow.recipes import recipe_path

PROCEDURE = "cholecystectomy"
PRODUCTION_MODEL = ("cholecystectomy-phase", 1)
RECIPE = recipe_path("tiny")


class DemoParams(BaseModel):
    """How big the demo is."""

    videos_per_split: dict[str, int] = Field(
        default={"train": 6, "val": 2, "test": 2}, description="videos to upload per split"
    )
    duration_s: float = Field(default=40.0, gt=1, description="length of each video")
    seed: int = 0
    recipe_path: str = Field(default=str(RECIPE), description="recipe trained at the end")
    train: bool = Field(default=True, description="run the training step")


@task(name="upload-videos")
def make_videos(params: DemoParams) -> list[SyntheticVideo]:
    """Synthetic videos whose ids fill each split (splits come from a hash of the id)."""
    out_dir = get_settings().home / "demo" / "videos"
    hospitals = ("hospital-a", "hospital-b")
    videos = []
    picked = ids_filling_splits(
        params.videos_per_split, lambda i: f"{hospitals[i % 2]}-case-{params.seed:02d}{i:04d}"
    )
    for i, video_id in picked:
        videos.append(
            generate_video(
                out_dir / f"{video_id}.mp4",
                seed=params.seed * 10_007 + i,
                duration_s=params.duration_s,
                hospital=hospitals[i % 2],
                width=160,
                height=128,
            )
        )
    return videos


@task(name="publish-events")
def publish_events(videos: list[SyntheticVideo], seed: int) -> dict[str, int]:
    """Uploads, production-model outputs for every video, full annotations for half of them."""
    settings = get_settings()
    labels = list(ProcedureCatalog(settings.home).get(PROCEDURE).labels)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    counts = {"videos": 0, "inference": 0, "annotations": 0}
    with Publisher.from_settings(settings) as pub:
        for i, v in enumerate(videos):
            pub.video(simulation.video_event(v, PROCEDURE, recorded_at=t0))
            pub.inference(
                simulation.model_output(
                    v, PROCEDURE, labels, PRODUCTION_MODEL, t0 + timedelta(minutes=1), seed=seed + i
                )
            )
            counts["videos"] += 1
            counts["inference"] += 1
            if i % 2 == 0:
                pub.annotation(simulation.annotation(v, "annotator-1", t0 + timedelta(minutes=5)))
                counts["annotations"] += 1
        pub.flush()
    return counts


@task(name="answer-feedback-tasks")
def answer_tasks(videos: list[SyntheticVideo]) -> int:
    """Annotators refine every open task's range with the ground truth."""
    settings = get_settings()
    by_id = {v.video_id: v for v in videos}
    answered = 0
    at = datetime.now(UTC)
    with Publisher.from_settings(settings) as pub:
        for t in TaskLedger(settings.home).list():
            if t["status"] != "open" or t["video_id"] not in by_id:
                continue
            pub.annotation(
                simulation.annotation(
                    by_id[t["video_id"]],
                    "annotator-2",
                    at,
                    t["start_frame"],
                    t["end_frame"],
                    task_id=t["task_id"],
                )
            )
            answered += 1
        pub.flush()
    return answered


@task(name="dataset-summary")
def dataset_summary() -> dict[str, Any]:
    m = DatasetStore(get_settings().home).manifest(PROCEDURE)
    return {
        "dataset": PROCEDURE,
        "version": m.version,
        "videos": m.videos,
        "provenance_frames": m.provenance_frames,
        "splits": m.splits,
    }


@flow(name="surgflow-demo", validate_parameters=True)
def demo_flow(params: DemoParams) -> dict[str, Any]:
    """Run the loop once end to end and return what each step produced."""
    started = time.monotonic()
    videos = make_videos(params)
    published = publish_events(videos, params.seed)
    first = feedback_flow(once=True)
    answered = answer_tasks(videos)
    second = feedback_flow(once=True)
    summary: dict[str, Any] = {
        "videos": len(videos),
        "published": published,
        "feedback_first": first,
        "tasks_answered": answered,
        "feedback_second": second,
        "dataset": dataset_summary(),
    }
    if params.train:
        record = training_flow(TrainingParams(recipe_path=params.recipe_path))
        summary["training"] = record
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary
