"""Highlight reels: the frames around each transition, captioned, as a playable MP4."""

from __future__ import annotations

import numpy as np
import pytest

from surgflow.data.synthetic import generate_video
from surgflow.data.taxonomy import CHOLEC80_PHASES
from surgflow.data.video import open_reader, probe
from surgflow.serving.highlights import reel_windows, write_reel


def _frame_labels(video) -> np.ndarray:
    labels = np.zeros(video.num_frames, dtype=np.int64)
    for s in video.segments:
        labels[s["start_frame"]:s["end_frame"]] = CHOLEC80_PHASES.index(s["label"])
    return labels


def _key_moments(labels: np.ndarray, fps: float) -> list[dict]:
    starts = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    return [{"frame": int(f), "time_s": f / fps, "from_label": CHOLEC80_PHASES[labels[f - 1]],
             "to_label": CHOLEC80_PHASES[labels[f]]} for f in starts]


def test_reel_holds_the_windows_frames_with_captions(tmp_path):
    video = generate_video(tmp_path / "case-reel.mp4", seed=11, duration_s=30, fps=10,
                           width=96, height=64, gop=10)
    labels = _frame_labels(video)
    moments = _key_moments(labels, 10.0)
    assert len(moments) >= 3
    windows = reel_windows(moments, video.num_frames, 10.0, before_s=1.0, after_s=1.5)
    out = tmp_path / "reel" / "case-reel-highlights.mp4"
    written = write_reel(video.path, out, frame_labels=labels, label_names=CHOLEC80_PHASES,
                         windows=windows, fps=10.0)
    assert written == sum(w.end - w.start for w in windows)
    assert written < video.num_frames
    info = probe(out)
    assert info.num_frames == written and (info.width, info.height) == (96, 64)
    assert info.fps == pytest.approx(10.0)
    assert not list(out.parent.glob(".*partial"))

    # the caption band differs from the source frame; the picture below it does not
    reel, src = open_reader(out), open_reader(video.path)
    w0 = windows[0]
    got, want = reel[0].asnumpy().astype(int), src[w0.start].asnumpy().astype(int)
    band = got.shape[0] // 5
    assert np.abs(got[:band] - want[:band]).mean() > 20
    assert np.abs(got[band * 2:-4] - want[band * 2:-4]).mean() < 12


@pytest.mark.integration
def test_highlights_command_reels_the_production_chains_key_moments(tmp_path, tiny_chain_bundle):
    from surgflow.config import get_settings
    from surgflow.data.registry import VideoRegistry
    from tests.cli_helpers import run_cli
    from tests.serving_helpers import promote, register_bundle

    videos = tmp_path / "videos"
    v = generate_video(videos / "case-hl-0001.mp4", seed=902, duration_s=20, fps=10, width=64,
                       height=64, gop=10)
    settings = get_settings(home=tmp_path / "home", video_roots=[videos])
    VideoRegistry(settings.home, settings.resolved_video_roots()).register(
        v.path.as_uri(), "cholecystectomy", "hospital-a")
    env = {"SURGFLOW_VIDEO_ROOTS": str(videos)}
    r = run_cli("highlights", v.video_id, home=settings.home, env=env, json=True, check=False)
    assert r.returncode == 2 and "no production model" in r.stderr
    promote(settings, register_bundle(settings, tiny_chain_bundle.bundle_dir))
    reel = tmp_path / "out" / "reel.mp4"
    out = run_cli("highlights", v.video_id, "--out", str(reel), "--before", "1", "--after", "2",
                  home=settings.home, env=env, json=True).data
    assert out["model"] == {"name": "cholecystectomy-phase", "version": 1}
    assert out["out"] == str(reel) and reel.is_file()
    moments = out["key_moments"]
    assert moments, "the chain found no phase transition in a 7-phase video"
    windows = reel_windows(moments, v.num_frames, 10.0, before_s=1, after_s=2)
    assert out["clips"] == len(windows)
    assert probe(reel).num_frames == out["frames"] == sum(w.end - w.start for w in windows)
    r = run_cli("highlights", "no-such-video", home=settings.home, env=env, json=True,
                check=False)
    assert r.returncode == 2 and "not registered" in r.stderr
