"""An annotator in a real browser (headless Chromium through Playwright): sign up, open the
most uncertain task, see the video and the model's pre-annotation, relabel one segment,
submit; the feedback flow then merges a version whose segments carry that label with human
provenance, and the task is completed. Screenshots of each step land in the test's tmp dir
(and under $SURGFLOW_SCREENSHOTS when set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from surgflow.config import get_settings
from surgflow.data.taxonomy import CHOLEC80_PHASES
from surgflow.feedback.client import Publisher
from tests.annotation_helpers import annotations_on_topic, start_bridge, wait
from tests.cli_helpers import run_cli
from tests.feedback_helpers import inference_event, video_event

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _shoot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("SURGFLOW_SCREENSHOTS"):
        out = Path(os.environ["SURGFLOW_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / path.name)


def test_an_annotator_relabels_a_segment_in_the_browser_and_it_reaches_a_version(
        kafka, label_studio, synthetic_corpus, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "the browser tests need Debian's chromium"
    v, w = synthetic_corpus[0], synthetic_corpus[2]
    with Publisher.from_settings(get_settings()) as pub:
        for video, low in ((v, 0.45), (w, 0.25)):
            confs = [low] + [0.9] * (len(video.segments) - 1)
            pub.video(video_event(video))
            pub.inference(inference_event(video, f"inf-{video.video_id}", 1, confidences=confs))
        pub.flush()
    run_cli("feedback", "run", "--once", json=True)
    bridge, _ = start_bridge(kafka.home)
    try:
        sync = run_cli("annotate", "sync", json=True).data
        project = sync["projects"]["cholecystectomy"]
        ls = label_studio.url
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{ls}/user/signup/")
            page.fill("input[name=email]", "surgeon.annotator@hospital.example")
            page.fill("input[name=password]", "a-long-password-1")
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            page.goto(f"{ls}/projects/{project}/data")
            page.wait_for_selector("text=Most uncertain first")
            _shoot(page, tmp_path, "1-queue")
            page.click("text=Label All Tasks")
            page.wait_for_selector("button:has-text('Submit')")
            # the most uncertain task first: the model was 25 % sure of w's first phase
            page.wait_for_selector(f"text={w.video_id}: check")
            # the video plays from the bridge: the player has decoded its first frame
            page.wait_for_function(
                "() => [...document.querySelectorAll('video')].some(v => v.readyState >= 2)",
                timeout=20_000)
            # the model's pre-annotation: one region per phase it predicted, and the review mark
            first = w.segments[0]["label"]
            outliner = page.locator("[class*=outliner]")
            outliner.get_by_text(first, exact=True).first.wait_for()
            outliner.get_by_text("Review", exact=True).first.wait_for()
            _shoot(page, tmp_path, "2-task")
            # relabel the first segment: select its region, press the key of another phase
            outliner.get_by_text(first, exact=True).first.click()
            target = next(p for p in CHOLEC80_PHASES if p != first)
            page.keyboard.press(str(CHOLEC80_PHASES.index(target) + 1))
            _shoot(page, tmp_path, "3-relabelled")
            page.click("button:has-text('Submit')")
            page.wait_for_timeout(1000)
            _shoot(page, tmp_path, "4-submitted")
            browser.close()

        events = wait(lambda: annotations_on_topic(kafka))
        assert len(events) == 1, events
        (event,) = events
        assert event["video_id"] == w.video_id
        assert event["annotator"] == "label-studio:surgeon.annotator@hospital.example"
        merged = run_cli("feedback", "run", "--once", json=True).data
        assert merged["applied"] == 1 and merged["versions_created"]
        rows = run_cli("data", "query", "SELECT start_frame, end_frame, label FROM segments "
                       f"WHERE video_id = '{w.video_id}' AND provenance = 'human'",
                       json=True).data
        end = w.segments[0]["end_frame"]
        assert rows and rows[0]["start_frame"] == 0 and rows[0]["label"] == target, rows
        assert rows[-1]["end_frame"] == end  # cut to the task's range
        tasks = {t["task_id"]: t for t in run_cli("feedback", "tasks", json=True).data}
        assert tasks[event["task_id"]]["status"] == "completed"
        assert tasks[event["task_id"]]["completed_by"] == event["event_id"]
    finally:
        bridge.terminate()
        bridge.wait(10)
