"""Chain bundles: every file written, ONNX parity against torch for every architecture small
enough for CI, dynamic axes, tamper detection, and bad bundles named in errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from surgflow.data.chain_bundle import OPSET, ChainSpec, file_hashes
from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.clips import normalise
from surgflow.data.seconds import second_clips
from surgflow.data.synthetic import generate_video
from surgflow.data.video import probe
from surgflow.errors import BadInput
from surgflow.export.bundle import build_bundle, bundle_from_run, check_parity
from surgflow.training import checkpoints
from surgflow.training.chain import chain_version
from surgflow.training.models import CLIP_ARCHITECTURES, MSTCN, build_clip_model
from surgflow.training.stage_files import load_torch_chain
from tests.fixtures.models import TrainedBundle

LABELS = [f"phase-{i}" for i in range(7)]
CHAIN_FILES = {"chain.json", "encoder.pt", "encoder.onnx", "temporal.pt", "temporal.onnx",
               "golden.npz", "parity.json"}


@pytest.fixture(scope="module")
def golden_video(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("golden") / "golden-case.mp4"
    generate_video(path, seed=5, duration_s=5, fps=10, width=80, height=64, gop=10)
    return path, probe(path)


def _cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_chain_bundle_holds_every_file_and_passes_parity(tiny_chain_bundle: TrainedBundle):
    b = tiny_chain_bundle
    assert {p.name for p in b.bundle_dir.iterdir()} == CHAIN_FILES
    spec = ChainSpec.model_validate_json((b.bundle_dir / "chain.json").read_text())
    assert spec == b.spec and spec.opset == OPSET == 17
    assert spec.labels[0] == "Preparation" and len(spec.labels) == 7
    assert spec.clip.model_dump() == b.recipe.clip.model_dump()
    assert [s.name for s in spec.stages] == ["encoder", "temporal"]

    parity = json.loads((b.bundle_dir / "parity.json").read_text())
    assert parity["passed"] is True and parity["reason"] is None
    assert parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert parity["opset"] == 17
    assert set(parity["stages"]) == {"encoder", "features", "temporal", "chain"}

    with np.load(b.bundle_dir / "golden.npz") as g:
        clips, video_id = g["clips"], str(g["video_id"])
        assert clips.dtype == np.uint8 and clips.shape == (12, 3, 1, 32, 32)  # 12 s video
        assert g["encoder_logits"].shape == g["chain_logits"].shape == (12, 7)
        assert g["features"].shape == (12, 64)
        chain_logits = g["chain_logits"]
    assert video_id == b.val_videos[0].stem  # the run's first validation video
    # the golden clips are real per-second clips, built as training builds them
    items = second_clips(_view_video(b), b.spec.clip)
    assert np.array_equal(clips, np.stack([items.read(i).transpose(3, 0, 1, 2)
                                           for i in range(12)]))
    assert len(set(chain_logits.argmax(1).tolist())) > 1  # a trained chain, not a constant


def _view_video(b: TrainedBundle):
    from surgflow.training import data

    return data.resolve(b.recipe, b.recipe.data.sources, "val", b.home).videos[0]


def test_stage_versions_are_weight_digests_of_the_run(tiny_chain_bundle: TrainedBundle):
    encoder, temporal, spec = load_torch_chain(tiny_chain_bundle.bundle_dir)
    assert temporal is not None and not encoder.training and not temporal.training
    for stage, model in (("clip", encoder), ("temporal", temporal)):
        state = checkpoints.load(checkpoints.latest(tiny_chain_bundle.run_dir, stage))
        assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    versions = [checkpoints.weights_digest(encoder), checkpoints.weights_digest(temporal)]
    assert [s.version for s in spec.stages] == versions
    assert spec.chain_version == chain_version(versions)
    assert spec.stages[1].feature_dim == spec.stages[0].feature_dim == 64


def test_encoder_graph_takes_raw_pixels_at_any_batch(tiny_chain_bundle: TrainedBundle):
    encoder, _, _ = load_torch_chain(tiny_chain_bundle.bundle_dir)
    sess = _cpu_session(tiny_chain_bundle.bundle_dir / "encoder.onnx")
    (clips_in,) = sess.get_inputs()
    assert clips_in.name == "clips" and clips_in.type == "tensor(uint8)"
    assert [o.name for o in sess.get_outputs()] == ["features", "logits"]
    with np.load(tiny_chain_bundle.bundle_dir / "golden.npz") as g:
        clips = g["clips"]
    for b in (1, 5, 12):
        features, logits = sess.run(None, {"clips": clips[:b]})
        with torch.no_grad():
            x = normalise(torch.from_numpy(clips[:b]))  # the training normalisation
            want_f, want_l = encoder.features(x).numpy(), encoder(x).numpy()
        assert features.shape == (b, 64) and logits.shape == (b, 7)
        assert np.abs(logits - want_l).max() <= 1e-4 and np.abs(features - want_f).max() <= 1e-4


def test_temporal_graph_has_dynamic_batch_and_time_axes(tiny_chain_bundle: TrainedBundle):
    _, temporal, _ = load_torch_chain(tiny_chain_bundle.bundle_dir)
    sess = _cpu_session(tiny_chain_bundle.bundle_dir / "temporal.onnx")
    rng = np.random.default_rng(0)
    for batch, length in ((1, 5), (3, 97)):  # the graph was exported at length 12
        x = rng.standard_normal((batch, 64, length)).astype(np.float32)
        (got,) = sess.run(None, {"features": x})
        with torch.no_grad():
            want = temporal(torch.from_numpy(x))[-1].numpy()  # last MS-TCN stage
        assert got.shape == (batch, 7, length)
        assert np.abs(got - want).max() <= 1e-4
        assert np.array_equal(got.argmax(1), want.argmax(1))


def test_check_parity_passes_on_the_bundle_as_built(tiny_chain_bundle: TrainedBundle):
    p = check_parity(tiny_chain_bundle.bundle_dir)
    assert p.passed and p.max_abs_diff <= 1e-4 and p.top1_agreement == 1.0
    assert {"chain", "stored.chain", "encoder", "stored.encoder"} <= set(p.stages)


def _copy(b: TrainedBundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(b.bundle_dir, tmp_path / "bundle"))


def test_altered_encoder_weights_in_onnx_fail_parity(tiny_chain_bundle, tmp_path):
    bundle = _copy(tiny_chain_bundle, tmp_path)
    model = onnx.load(str(bundle / "encoder.onnx"))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))  # a conv weight
    w = onnx.numpy_helper.to_array(init).copy()
    w *= 1.05
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(model, str(bundle / "encoder.onnx"))
    p = check_parity(bundle)
    assert not p.passed and p.max_abs_diff > 1e-4
    assert "encoder" in p.reason and "chain" in p.reason


def test_garbage_temporal_onnx_fails_parity_without_raising(tiny_chain_bundle, tmp_path):
    bundle = _copy(tiny_chain_bundle, tmp_path)
    (bundle / "temporal.onnx").write_bytes(b"\x08\x07not an onnx graph" * 50)
    p = check_parity(bundle)
    assert not p.passed and "cannot be run" in p.reason


def test_altered_torch_weights_fail_parity(tiny_chain_bundle, tmp_path):
    bundle = _copy(tiny_chain_bundle, tmp_path)
    obj = torch.load(bundle / "temporal.pt", weights_only=True)
    obj["state_dict"] = {k: v * 1.5 for k, v in obj["state_dict"].items()}
    torch.save(obj, bundle / "temporal.pt")
    p = check_parity(bundle)
    assert not p.passed and p.stages["chain"].max_abs_diff > 1e-4
    assert p.stages["stored.chain"].max_abs_diff <= 1e-4  # the ONNX graph itself is intact


@pytest.mark.parametrize("name", ["temporal.onnx", "golden.npz", "encoder.pt", "chain.json"])
def test_a_missing_bundle_file_is_named(tiny_chain_bundle, tmp_path, name):
    bundle = _copy(tiny_chain_bundle, tmp_path)
    (bundle / name).unlink()
    with pytest.raises(BadInput, match=name.replace(".", r"\.")):
        check_parity(bundle)


def test_file_hashes_are_the_sha256_of_every_file(tiny_chain_bundle):
    hashes = file_hashes(tiny_chain_bundle.bundle_dir)
    assert set(hashes) == CHAIN_FILES
    for name, digest in hashes.items():
        assert digest == hashlib.sha256((tiny_chain_bundle.bundle_dir / name).read_bytes()
                                        ).hexdigest()


def test_encoder_only_bundle_passes_parity(tiny_encoder_bundle: TrainedBundle):
    b = tiny_encoder_bundle
    assert {p.name for p in b.bundle_dir.iterdir()} == CHAIN_FILES - {"temporal.pt",
                                                                      "temporal.onnx"}
    assert [s.architecture for s in b.spec.stages] == ["tiny3d"]
    assert b.spec.chain_version == b.spec.stages[0].version  # the run's model version
    parity = json.loads((b.bundle_dir / "parity.json").read_text())
    assert parity["passed"] and set(parity["stages"]) == {"encoder", "features"}
    with np.load(b.bundle_dir / "golden.npz") as g:
        assert g["clips"].shape == (12, 3, 4, 32, 32) and "chain_logits" not in g.files
    encoder, temporal, _ = load_torch_chain(b.bundle_dir)
    assert temporal is None and encoder.arch_name == "tiny3d"
    assert check_parity(b.bundle_dir).passed


def test_a_failed_parity_is_recorded_not_raised(tiny_chain_bundle, tmp_path, monkeypatch):
    from surgflow.export import bundle as bundle_mod

    real = bundle_mod.export_encoder

    def export_other_weights(model, clips, path):
        other = build_clip_model(model.arch_name, model.head.out_features)
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            other.head.bias += 1.0
        return real(other.eval(), clips, path)

    monkeypatch.setattr(bundle_mod, "export_encoder", export_other_weights)
    encoder, temporal, spec = load_torch_chain(tiny_chain_bundle.bundle_dir)
    got = build_bundle(tmp_path / "b", procedure="cholecystectomy", labels=spec.labels,
                       clip=spec.clip, encoder=encoder, temporal=temporal,
                       golden_video=_view_video(tiny_chain_bundle))
    parity = json.loads((tmp_path / "b" / "parity.json").read_text())
    assert got.chain_version == spec.chain_version
    assert parity["passed"] is False and "encoder" in parity["reason"]
    assert parity["stages"]["encoder"]["max_abs_diff"] == pytest.approx(1.0, abs=1e-4)


def test_bundle_from_run_takes_a_stage_it_did_not_train_from_reuse(tiny_chain_bundle, tmp_path):
    b = tiny_chain_bundle
    run = Path(shutil.copytree(b.run_dir, tmp_path / "run"))
    shutil.rmtree(run / "checkpoints" / "temporal")
    with pytest.raises(BadInput, match="temporal"):
        bundle_from_run(run, tmp_path / "no-reuse", home=b.home)
    spec = bundle_from_run(run, tmp_path / "reused", home=b.home, reuse=b.bundle_dir)
    assert spec.stages == b.spec.stages and spec.chain_version == b.spec.chain_version


def test_a_corrupt_checkpoint_is_named(tiny_chain_bundle, tmp_path):
    run = Path(shutil.copytree(tiny_chain_bundle.run_dir, tmp_path / "run"))
    ckpt = checkpoints.latest(run, "clip")
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(BadInput, match=str(ckpt)):
        bundle_from_run(run, tmp_path / "out", home=tiny_chain_bundle.home)
    assert not (tmp_path / "out").exists()


def test_a_bundle_is_never_written_over(tiny_chain_bundle):
    encoder, temporal, spec = load_torch_chain(tiny_chain_bundle.bundle_dir)
    with pytest.raises(BadInput, match="not empty"):
        build_bundle(tiny_chain_bundle.bundle_dir, procedure="cholecystectomy",
                     labels=spec.labels, clip=spec.clip, encoder=encoder, temporal=temporal,
                     golden_video=_view_video(tiny_chain_bundle))


def _realistic(name: str, clips: torch.Tensor) -> torch.nn.Module:
    """A randomly initialised model scaled the way trained ones are, so that parity on it
    means something: batch-norm statistics of real-scale inputs (fresh statistics make some
    architectures' features vanish: constant logits would prove nothing), small residual
    branches in bottleneck blocks (unscaled, ResNet-50's activations grow with depth to where
    fp32 itself differs by 1e-4 between two conv implementations) and logits of a few units."""
    torch.manual_seed(0)
    model = build_clip_model(name, len(LABELS))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the calibration batch
            m.reset_running_stats()
    x = normalise(clips)
    model.train()
    with torch.no_grad():
        model(x.repeat(16, 1, 1, 1, 1) + 0.5 * torch.randn((16 * len(x), *x.shape[1:])))
        model.eval()
        for m in model.modules():
            if hasattr(m, "bn3") and hasattr(m, "downsample"):  # torchvision Bottleneck
                m.bn3.weight.mul_(0.2)
        logits = model.head(model.features(x)) - model.head.bias
        model.head.weight.mul_(4.0 / logits.abs().max())
    return model


SLOW = {"resnet50", "convnext_tiny", "s3d", "mvit_v2_s"}  # ~10 s or more each on 2 cores
ARCHS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
         for n in CLIP_ARCHITECTURES if n not in ("tiny2d", "tiny3d")]


@pytest.mark.parametrize("name", ARCHS)
def test_parity_holds_for_every_registered_architecture(name, golden_video, tmp_path):
    arch = CLIP_ARCHITECTURES[name]
    frames = arch.fixed_frames or (max(2, arch.min_frames) if arch.kind == "video" else 1)
    size = arch.fixed_size or max(32, arch.min_size)
    clip = ClipSpec(frames=frames, stride=1, fps=5, size=size)
    path, info = golden_video
    items = second_clips(_as_clip_video(path, info), clip)
    model = _realistic(name, torch.from_numpy(items.batch(0, len(items))))
    temporal = MSTCN(arch.feature_dim, len(LABELS), stages=2, layers=4, channels=16)
    temporal = temporal if name == "resnet18" else None  # the default chain
    spec = build_bundle(tmp_path / name, procedure="cholecystectomy", labels=LABELS,
                        clip=clip, encoder=model, temporal=temporal,
                        golden_video=(path, info), golden_seconds=3)
    parity = json.loads((tmp_path / name / "parity.json").read_text())
    assert parity["passed"], parity
    assert parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    with np.load(tmp_path / name / "golden.npz") as g:
        assert g["clips"].shape == (3, 3, frames, size, size)
        assert g["encoder_logits"].std(0).max() > 1e-3  # logits that differ between clips
    assert spec.encoder.feature_dim == arch.feature_dim


def _as_clip_video(path: Path, info):
    from surgflow.data.frames import ClipVideo

    return ClipVideo.of(path, info)
