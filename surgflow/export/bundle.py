"""Chain bundles: write one from trained stages, read its stages back, hash its files.

:func:`build_bundle` writes every file of a bundle (see :mod:`surgflow.export.spec`), then runs
parity and records it; :func:`bundle_from_run` does the same from a finished training run's
last checkpoints; :func:`check_parity` re-runs parity on a bundle that already exists (the
registry before a promotion or rollback, the service before a hot swap) without writing
anything; :func:`load_torch_chain` gives a bundle's torch stages back for reuse in training.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.frames import ClipVideo
from surgflow.data.seconds import second_clips
from surgflow.data.video import VideoInfo, sha256_file
from surgflow.data.views import ViewVideo
from surgflow.errors import BadInput
from surgflow.export import parity as P
from surgflow.export.graphs import export_encoder, export_temporal
from surgflow.export.spec import (
    CHAIN_FILE,
    GOLDEN_FILE,
    OPSET,
    PARITY_FILE,
    ChainSpec,
    Parity,
    StageInfo,
)
from surgflow.storage import json_bytes, write_atomic
from surgflow.training import checkpoints
from surgflow.training.chain import chain_version
from surgflow.training.models import MSTCN, ClipModel, build_clip_model, build_temporal_model

ENCODER_ONNX, ENCODER_PT = "encoder.onnx", "encoder.pt"
TEMPORAL_ONNX, TEMPORAL_PT = "temporal.onnx", "temporal.pt"

GoldenVideo = ViewVideo | ClipVideo | tuple[str | Path, VideoInfo]


def build_bundle(
    out_dir: Path,
    *,
    procedure: str,
    labels: list[str] | tuple[str, ...],
    clip: ClipSpec,
    encoder: ClipModel,
    temporal: MSTCN | None,
    temporal_spec: Any = None,
    golden_video: GoldenVideo,
    golden_seconds: int = 16,
) -> ChainSpec:
    """Write the chain bundle of ``encoder`` (and ``temporal``) into the new directory
    ``out_dir``, with golden inputs from ``golden_video`` and their parity; returns its spec.

    ``temporal_spec`` is the recipe's ``temporal`` section (a TemporalSpec or its dict); it is
    read off the network when omitted. A failed parity is recorded in ``parity.json``, not
    raised."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise BadInput(f"chain bundle directory {out_dir} is not empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(labels) != encoder.head.out_features:
        raise BadInput(f"encoder {encoder.arch_name} has {encoder.head.out_features} classes "
                       f"but {len(labels)} labels were given: {list(labels)}")
    encoder = encoder.cpu().eval()
    video = _clip_video(golden_video)
    items = second_clips(video, clip)
    n = min(int(golden_seconds), len(items))
    if n < 1:
        raise BadInput(f"golden video {video.video_id!r}: golden_seconds must be >= 1")
    clips = items.batch(0, n)

    stages = [StageInfo(name="encoder", architecture=encoder.arch_name,
                        version=checkpoints.weights_digest(encoder), file_onnx=ENCODER_ONNX,
                        file_torch=ENCODER_PT, feature_dim=encoder.feature_dim)]
    _save_torch(out_dir / ENCODER_PT, {
        "architecture": encoder.arch_name, "num_classes": len(labels),
        "dropout": float(encoder.dropout.p), "state_dict": encoder.state_dict()})
    export_encoder(encoder, torch.from_numpy(clips[: min(n, 2)]), out_dir / ENCODER_ONNX)
    if temporal is not None:
        temporal = temporal.cpu().eval()
        if temporal.in_dim != encoder.feature_dim:
            raise BadInput(f"temporal stage reads {temporal.in_dim} features but encoder "
                           f"{encoder.arch_name} gives {encoder.feature_dim}")
        stages.append(StageInfo(name="temporal", architecture="mstcn",
                                version=checkpoints.weights_digest(temporal),
                                file_onnx=TEMPORAL_ONNX, file_torch=TEMPORAL_PT,
                                feature_dim=temporal.in_dim))
        _save_torch(out_dir / TEMPORAL_PT, {
            "spec": _temporal_spec(temporal, temporal_spec), "in_dim": temporal.in_dim,
            "num_classes": temporal.num_classes, "state_dict": temporal.state_dict()})
        export_temporal(temporal, torch.zeros(1, temporal.in_dim, max(n, 2)),
                        out_dir / TEMPORAL_ONNX)

    versions = [s.version for s in stages]
    spec = ChainSpec(procedure=procedure, labels=list(labels), clip=clip, stages=stages,
                     chain_version=chain_version(versions) if len(versions) > 1 else versions[0],
                     opset=OPSET)
    reference = P.reference_outputs(encoder, temporal, clips)
    np.savez(out_dir / GOLDEN_FILE, clips=clips, video_id=np.array(video.video_id), **reference)
    write_atomic(out_dir / CHAIN_FILE, json_bytes(spec.model_dump(mode="json")))
    result = _onnx_parity(out_dir, spec, clips, reference)
    # through model_dump_json: strict JSON even for an infinite difference
    write_atomic(out_dir / PARITY_FILE, json_bytes(json.loads(result.model_dump_json())))
    return spec


def bundle_from_run(run_dir: Path, out_dir: Path, *, home: Path,
                    reuse: Path | None = None) -> ChainSpec:
    """The bundle of the finished training run in ``run_dir``, from its last checkpoints.

    The golden video is the first validation video of the run's view. ``reuse`` is a bundle
    (e.g. production's) whose stages stand in for those the run did not train: a recipe that
    takes its temporal stage ``from: production`` has no temporal checkpoint of its own."""
    from surgflow.data.taxonomy import ProcedureCatalog
    from surgflow.training import data
    from surgflow.training.recipe import parse_recipe

    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise BadInput(f"training run {run_dir}: {recipe_file.name} is missing")
    recipe = parse_recipe(json.loads(recipe_file.read_text()), origin=f"run {run_dir.name}")
    labels = ProcedureCatalog(home).get(recipe.procedure).labels
    reused = load_torch_chain(reuse) if reuse is not None else None

    clip_ckpt = checkpoints.latest(run_dir, "clip")
    if clip_ckpt is not None:
        encoder = build_clip_model(recipe.model.architecture, len(labels),
                                   dropout=recipe.model.dropout)
        _load_weights(encoder, _read_checkpoint(clip_ckpt)["model"], clip_ckpt)
    elif reused is not None:
        encoder = reused[0]
    else:
        raise BadInput(f"training run {run_dir}: no checkpoint of stage 'clip' under "
                       f"{checkpoints.stage_dir(run_dir, 'clip')}")

    temporal, temporal_spec = None, None
    temporal_ckpt = checkpoints.latest(run_dir, "temporal")
    if temporal_ckpt is not None:
        if recipe.temporal is None:
            raise BadInput(f"training run {run_dir}: has temporal checkpoints but its recipe "
                           "has no temporal stage")
        temporal_spec = recipe.temporal
        temporal = build_temporal_model(temporal_spec, encoder.feature_dim, len(labels))
        _load_weights(temporal, _read_checkpoint(temporal_ckpt)["model"], temporal_ckpt)
    elif reused is not None and reused[1] is not None:
        temporal = reused[1]
        temporal_spec = _read_torch(Path(reuse) / reused[2].temporal.file_torch)["spec"]
    elif recipe.temporal is not None:
        raise BadInput(f"training run {run_dir}: its recipe has a temporal stage but there is "
                       f"no checkpoint under {checkpoints.stage_dir(run_dir, 'temporal')}")

    val = data.resolve(recipe, recipe.data.sources, "val", home)
    if not val.videos:
        raise BadInput(f"training run {run_dir}: the val split of {recipe.data.sources} has "
                       "no videos to take golden clips from")
    return build_bundle(out_dir, procedure=recipe.procedure, labels=list(labels),
                        clip=recipe.clip, encoder=encoder, temporal=temporal,
                        temporal_spec=temporal_spec, golden_video=val.videos[0])


def read_spec(bundle_dir: Path) -> ChainSpec:
    """A bundle's ``chain.json``; BadInput naming the file when it is missing or invalid."""
    path = Path(bundle_dir) / CHAIN_FILE
    if not path.is_file():
        raise BadInput(f"chain bundle {bundle_dir}: file {CHAIN_FILE} is missing")
    try:
        return ChainSpec.model_validate_json(path.read_bytes())
    except ValueError as e:
        raise BadInput(f"chain bundle {bundle_dir}: {CHAIN_FILE} is not a valid chain spec: "
                       f"{' '.join(str(e).split())[:300]}") from e


def check_files(bundle_dir: Path, spec: ChainSpec) -> None:
    """BadInput naming the first file of the bundle that is missing."""
    for name in spec.files:
        if not (Path(bundle_dir) / name).is_file():
            raise BadInput(f"chain bundle {bundle_dir}: file {name} is missing")


def load_torch_chain(bundle_dir: Path) -> tuple[ClipModel, MSTCN | None, ChainSpec]:
    """The bundle's torch stages (eval mode, CPU) and its spec."""
    from surgflow.training.recipe import TemporalSpec

    bundle_dir = Path(bundle_dir)
    spec = read_spec(bundle_dir)
    path = bundle_dir / spec.encoder.file_torch
    enc = _read_torch(path)
    encoder = build_clip_model(enc["architecture"], int(enc["num_classes"]),
                               dropout=float(enc.get("dropout", 0.0)))
    _load_weights(encoder, enc["state_dict"], path)
    temporal = None
    if spec.temporal is not None:
        path = bundle_dir / spec.temporal.file_torch
        tmp = _read_torch(path)
        temporal = build_temporal_model(TemporalSpec.model_validate(tmp["spec"]),
                                        int(tmp["in_dim"]), int(tmp["num_classes"]))
        _load_weights(temporal, tmp["state_dict"], path)
        temporal.eval()
    return encoder.eval(), temporal, spec


def check_parity(bundle_dir: Path) -> Parity:
    """Re-run the bundle's ONNX graphs on its golden clips against the torch reference outputs
    stored with them and against the torch stages rebuilt from its ``.pt`` files; the worse of
    the two decides. Writes nothing. A missing file raises BadInput naming it; graphs that
    cannot be loaded or run give a failed parity."""
    bundle_dir = Path(bundle_dir)
    spec = read_spec(bundle_dir)
    check_files(bundle_dir, spec)
    golden = _read_golden(bundle_dir, spec)
    encoder, temporal, _ = load_torch_chain(bundle_dir)
    rebuilt = P.reference_outputs(encoder, temporal, golden["clips"])
    try:
        got = P.onnx_outputs(bundle_dir, spec, golden["clips"], rebuilt["features"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException
        return P.failed(f"chain bundle {bundle_dir}: the ONNX graphs cannot be run: "
                        f"{' '.join(str(e).split())[:300]}")
    stored = {k: golden[k] for k in ("encoder_logits", "features", "chain_logits")
              if k in golden}
    vs_rebuilt, vs_stored = P.compare(rebuilt, got), P.compare(stored, got)
    stages = dict(vs_rebuilt.stages) | {f"stored.{k}": v for k, v in vs_stored.stages.items()}
    return P.summarise(stages)


def file_hashes(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``bundle_dir``, by path relative to it (read in chunks)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BadInput(f"chain bundle {root} does not exist")
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _onnx_parity(bundle_dir: Path, spec: ChainSpec, clips: np.ndarray,
                 reference: P.Outputs) -> Parity:
    try:
        got = P.onnx_outputs(bundle_dir, spec, clips, reference["features"])
    except Exception as e:
        return P.failed(f"the exported ONNX graphs cannot be run: {' '.join(str(e).split())}")
    return P.compare(reference, got)


def _clip_video(golden: GoldenVideo) -> ViewVideo | ClipVideo:
    if isinstance(golden, tuple):
        return ClipVideo.of(*golden)
    return golden


def _temporal_spec(model: MSTCN, spec: Any) -> dict[str, Any]:
    from surgflow.training.recipe import TemporalSpec

    if spec is None:
        first = model.stages[0]
        spec = TemporalSpec(stages=len(model.stages), layers=len(first.layers),
                            channels=first.inp.out_channels,
                            dropout=float(first.layers[0].dropout.p), causal=model.causal)
    elif isinstance(spec, dict):
        spec = TemporalSpec.model_validate(spec)
    return spec.model_dump(mode="json")


def _save_torch(path: Path, obj: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def _read_torch(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise BadInput(f"chain bundle {Path(path).parent}: file {Path(path).name} is missing")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"weights file {path} cannot be read: {_short(e)}") from e
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise BadInput(f"weights file {path} is not a surgflow stage file (no state_dict)")
    return obj


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = checkpoints.load(path)
    except Exception as e:
        raise BadInput(f"checkpoint {path} cannot be read: {_short(e)}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise BadInput(f"checkpoint {path} holds no model weights")
    return state


def _load_weights(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise BadInput(f"weights in {path} do not fit the model: {_short(e)}") from e


def _read_golden(bundle_dir: Path, spec: ChainSpec) -> dict[str, np.ndarray]:
    path = bundle_dir / GOLDEN_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            golden = {k: z[k] for k in z.files}
    except Exception as e:
        raise BadInput(f"chain bundle {bundle_dir}: {GOLDEN_FILE} cannot be read: "
                       f"{_short(e)}") from e
    need = ["clips", "encoder_logits", "features"] + (["chain_logits"] if spec.temporal else [])
    missing = [k for k in need if k not in golden]
    if missing:
        raise BadInput(f"chain bundle {bundle_dir}: {GOLDEN_FILE} lacks {', '.join(missing)}")
    if golden["clips"].dtype != np.uint8 or golden["clips"].ndim != 5:
        raise BadInput(f"chain bundle {bundle_dir}: {GOLDEN_FILE} clips are "
                       f"{golden['clips'].dtype} {golden['clips'].shape}, expected uint8 L×3×T×S×S")
    return golden


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__
