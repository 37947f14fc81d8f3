"""Pure parts of training: metrics, checkpoints, the feature cache, per-second labels, runs."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.seconds import second_clips
from surgflow.data.views import ViewVideo
from surgflow.errors import BadInput, NotFound
from surgflow.training import checkpoints
from surgflow.training.data import second_labels
from surgflow.training.features import FeatureCache
from surgflow.training.loop import confusion, scores
from surgflow.training.models import build_clip_model
from surgflow.training.runs import RunStore
from surgflow.training.utilisation import UtilisationSampler


def test_accuracy_and_macro_f1_match_a_hand_computation():
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    p = torch.tensor([0, 0, 1, 1, 2, 2])
    cm = confusion(p, y, 4)  # class 3 never occurs: it must not drag the mean down
    assert cm.tolist()[0] == [2, 1, 0, 0] and cm.sum() == 6
    s = scores(cm)
    f1 = [2 * 2 / (3 + 2), 2 * 1 / (2 + 2), 2 * 1 / (1 + 2)]
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert scores(torch.zeros(3, 3, dtype=torch.long)) == {"accuracy": 0.0, "macro_f1": 0.0}


def test_checkpoint_round_trip_restores_model_optimiser_and_provenance(tmp_path):
    torch.manual_seed(0)
    model = build_clip_model("tiny2d", 5)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    model(torch.randn(2, 3, 1, 32, 32)).sum().backward()
    opt.step()
    sched.step()
    path = checkpoints.save(tmp_path, "clip", 2, model=model, optimizer=opt, scheduler=sched,
                            scaler=None, recipe={"name": "r"}, dataset_versions=["d@3"],
                            metrics={"val": {"accuracy": 0.5}})
    assert checkpoints.latest(tmp_path, "clip") == path
    assert checkpoints.latest(tmp_path, "temporal") is None
    other = build_clip_model("tiny2d", 5)
    opt2 = torch.optim.AdamW(other.parameters(), lr=0.01)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=4)
    state = checkpoints.load(path)
    assert checkpoints.restore(state, model=other, optimizer=opt2, scheduler=sched2) == 2
    assert checkpoints.weights_digest(other) == checkpoints.weights_digest(model)
    assert opt2.state_dict()["state"][0]["step"] == 1 and sched2.last_epoch == 1
    assert state["dataset_versions"] == ["d@3"] and state["recipe"] == {"name": "r"}
    assert state["code_version"].startswith(("git:", "surgflow-"))


def test_feature_cache_is_keyed_by_model_version_and_video_hash(tmp_path):
    cache = FeatureCache(tmp_path)
    feats = torch.randn(12, 8)
    assert cache.put("ab12cd34", "f" * 64, feats) is True
    assert cache.put("ab12cd34", "f" * 64, torch.zeros(12, 8)) is False  # first write stays
    assert torch.allclose(cache.get("ab12cd34", "f" * 64), feats.half().float())
    assert cache.get("ef56ab78", "f" * 64) is None
    with pytest.raises(ValueError, match="video sha256"):
        cache.path("ab12cd34", "../../etc")


def _video(n: int, fps: float) -> ViewVideo:
    return ViewVideo(video_id="v", uri="/nonexistent.mp4", path="/nonexistent.mp4",
                     sha256="0" * 64, procedure="cholecystectomy", source="h", recorded_at=None,
                     num_frames=n, fps=fps, width=64, height=64, split="train",
                     content_hash="", dataset="cholecystectomy", version=1)


def test_second_labels_put_each_labelled_second_in_place():
    view = SimpleNamespace(videos=[_video(250, 25.0)], video=np.array([0, 0, 0]),
                           start=np.array([0, 50, 225]),  # seconds 0, 2 and 9
                           label=np.array([3, 1, 6]))
    labels = second_labels(view)["v"]
    assert labels.tolist() == [3, -1, 1, -1, -1, -1, -1, -1, -1, 6]


def test_second_clips_are_centred_on_each_second_and_stay_inside_the_video():
    ds = second_clips(_video(250, 25.0), ClipSpec(frames=8, stride=1, fps=5, size=32))
    assert len(ds) == 10
    frames = [ds.frames_of(i) for i in range(len(ds))]
    assert frames[0][0] == 0 and frames[-1][-1] <= 249
    assert frames[5][4] == 125  # centre frame (index frames // 2) of second 5
    with pytest.raises(BadInput, match="fewer than one clip"):
        second_clips(_video(20, 25.0), ClipSpec(frames=8, stride=1, fps=5, size=32))


def test_run_store_creates_reads_and_lists_runs(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create("r", {"recipe_name": "r"})
    assert store.update(run_id, status="running")["status"] == "running"
    assert [r["run_id"] for r in store.list()] == [run_id]
    # metrics live in MLflow: a record without an MLflow run has none, and no files for them
    assert store.show(run_id)["epochs"] == [] and store.epoch_count(run_id) == 0
    assert sorted(p.name for p in store.dir(run_id).iterdir()) == ["run.json"]
    with pytest.raises(NotFound, match="does not exist"):
        store.get("missing-run")


def test_utilisation_summary_per_rank():
    from surgflow.training.runs import _summarise

    sample = {"t": 1.0, "rank": 0, "cpu_percent": 50.0, "rss_mb": 100.0, "loader_wait_s": 0.5,
              "gpu_util_percent": None, "gpu_mem_mb": None}
    out = _summarise([sample, sample | {"cpu_percent": 30.0, "rss_mb": 120.0},
                      sample | {"rank": 1, "gpu_util_percent": 80.0, "gpu_mem_mb": 900.0}])
    assert out["0"] == {"samples": 2, "cpu_percent_mean": 40.0, "rss_mb_max": 120.0,
                        "loader_wait_s_total": 1.0, "gpu_util_percent_mean": None,
                        "gpu_mem_mb_max": None}
    assert out["1"]["gpu_util_percent_mean"] == 80.0 and out["1"]["gpu_mem_mb_max"] == 900.0


def test_utilisation_sampler_measures_this_process():
    sampler = UtilisationSampler(rank=3, interval_s=0.05).start()
    sampler.add_wait(0.25)
    x = torch.randn(300, 300)
    deadline = time.monotonic() + 0.4
    while time.monotonic() < deadline:
        x = x @ x.T / 300
    samples = sampler.stop()
    assert len(samples) >= 3 and all(s["rank"] == 3 for s in samples)
    assert sum(s["loader_wait_s"] for s in samples) == pytest.approx(0.25)
    assert max(s["cpu_percent"] for s in samples) > 10
    assert samples[0]["rss_mb"] > 50 and samples[0]["gpu_util_percent"] is None


def test_uint8_batches_are_normalised_on_the_device_like_float_clips() -> None:
    from surgflow.data.clips import to_tensor
    from surgflow.training.loop import as_input

    frames = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    as_float = to_tensor(frames)
    raw = to_tensor(frames, dtype=torch.uint8)
    assert raw.dtype == torch.uint8
    batch = as_input(torch.stack([raw, raw]))
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch[1], as_float)
    features = torch.randn(2, 5, 7)
    assert as_input(features) is features


def test_augmentation_moves_every_frame_of_a_clip_alike_and_clips_differently():
    from surgflow.training.augment import augment
    from surgflow.training.loop import as_input
    from surgflow.training.recipe import AugmentSpec

    rng = np.random.default_rng(1)
    frame = torch.from_numpy(rng.integers(0, 256, size=(3, 1, 24, 24), dtype=np.uint8))
    clips = torch.stack([frame.repeat(1, 4, 1, 1)] * 4)  # B×C×T×H×W, all frames equal
    torch.manual_seed(0)
    out = augment(clips, AugmentSpec())
    assert out.shape == clips.shape and out.dtype == torch.float32
    for t in range(1, 4):  # one transform per clip: its frames stay equal to each other
        torch.testing.assert_close(out[:, :, t], out[:, :, 0])
    assert not torch.allclose(out[0], out[1])  # each clip draws its own transform
    torch.manual_seed(0)
    torch.testing.assert_close(augment(clips, AugmentSpec()), out)  # seeded: repeatable

    still = AugmentSpec(crop_scale=(1, 1), crop_ratio=(1, 1), flip=0, brightness=0, contrast=0,
                        saturation=0, hue=0)
    torch.testing.assert_close(augment(clips, still), as_input(clips))
    mirrored = augment(clips, still.model_copy(update={"flip": 1.0}))
    torch.testing.assert_close(mirrored, as_input(clips).flip(-1))
    brighter = augment(clips, still.model_copy(update={"brightness": 0.5}))
    assert not torch.allclose(brighter, as_input(clips))


def test_augment_section_is_validated():
    from surgflow.errors import ConfigError
    from surgflow.training.recipe import parse_recipe

    base = {"name": "r", "data": {"sources": ["cholecystectomy"]}}
    assert parse_recipe(base).augment.enabled  # on by default, for training clips only
    with pytest.raises(ConfigError, match=r"'augment.crop_scale'.*0 < low ≤ high ≤ 1"):
        parse_recipe(base | {"augment": {"crop_scale": [0.9, 0.5]}})
    with pytest.raises(ConfigError, match=r"'augment\.flip'"):
        parse_recipe(base | {"augment": {"flip": 2}})
