"""Chain bundles: write one from trained stages, or from a finished run; re-run its parity.

:func:`build_bundle` writes every file of a bundle (see :mod:`surgflow.data.chain_bundle`),
then runs parity and records it; :func:`bundle_from_run` writes the bundle of a finished
training run's chain (:func:`surgflow.training.run_chain.run_chain`); :func:`check_parity`
re-runs parity on a bundle that already exists (the registry before a promotion or rollback)
without writing anything. Reading a bundle needs no torch: :mod:`surgflow.data.chain_bundle`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surgflow.data.chain_bundle import (
    CHAIN_FILE,
    ENCODER_ONNX,
    ENCODER_PT,
    GOLDEN_FILE,
    OPSET,
    PARITY_FILE,
    TEMPORAL_ONNX,
    TEMPORAL_PT,
    ChainSpec,
    Parity,
    StageInfo,
    check_files,
    read_golden,
    read_spec,
)
from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.frames import ClipVideo
from surgflow.data.seconds import second_clips
from surgflow.data.video import VideoInfo
from surgflow.data.views import ViewVideo
from surgflow.errors import BadInput
from surgflow.export import parity as P
from surgflow.export.graphs import export_encoder, export_temporal
from surgflow.storage import json_bytes, write_atomic
from surgflow.training import checkpoints, stage_files
from surgflow.training.chain import chain_version
from surgflow.training.models import MSTCN, ClipModel

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
    stage_files.save(out_dir / ENCODER_PT, stage_files.encoder_file(encoder))
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
        stage_files.save(out_dir / TEMPORAL_PT, stage_files.temporal_file(temporal, temporal_spec))
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
    """The bundle of the finished training run in ``run_dir``, from its last checkpoints, with
    the stages it did not train from the bundle ``reuse`` (see
    :func:`~surgflow.training.run_chain.run_chain`)."""
    from surgflow.training.run_chain import run_chain

    c = run_chain(run_dir, home=home, reuse=reuse)
    return build_bundle(out_dir, procedure=c.procedure, labels=c.labels, clip=c.clip,
                        encoder=c.encoder, temporal=c.temporal, temporal_spec=c.temporal_spec,
                        golden_video=c.golden_video)


def check_parity(bundle_dir: Path) -> Parity:
    """Re-run the bundle's ONNX graphs on its golden clips against the torch reference outputs
    stored with them and against the torch stages rebuilt from its ``.pt`` files; the worse of
    the two decides. Writes nothing. A missing file raises BadInput naming it; graphs that
    cannot be loaded or run give a failed parity."""
    bundle_dir = Path(bundle_dir)
    spec = read_spec(bundle_dir)
    check_files(bundle_dir, spec)
    golden = read_golden(bundle_dir, spec)
    encoder, temporal, _ = stage_files.load_torch_chain(bundle_dir)
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
