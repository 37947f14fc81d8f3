"""Parity: a bundle's ONNX chain against its torch chain on the golden inputs.

:func:`reference_outputs` is the torch fp32 chain (eval mode, CPU) on uint8 clips,
:func:`onnx_outputs` the same chain in onnxruntime on the CPU provider, :func:`compare` the pure
comparison. Parity passes when every logit is within
:data:`~surgflow.data.chain_bundle.TOLERANCE` of torch's and the top-1 class is identical
everywhere, for the encoder head and the whole chain.
A failure is a result (``passed`` false, with the reason), not an exception: the registry keeps
such a version and marks it unpromotable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from surgflow.data.chain_bundle import OPSET, TOLERANCE, ChainSpec, Parity, StageParity
from surgflow.data.clips import normalise
from surgflow.export.sessions import CPU, make_session
from surgflow.training.models import MSTCN, ClipModel

Outputs = dict[str, np.ndarray]  # "encoder_logits" L×C, "features" L×D, "chain_logits" L×C
GATED = ("encoder", "temporal", "chain")


@torch.no_grad()
def reference_outputs(encoder: ClipModel, temporal: MSTCN | None, clips: np.ndarray,
                      batch_size: int = 16) -> Outputs:
    """The torch chain's outputs on uint8 clips ``L×3×T×S×S``."""
    encoder.eval()
    feats, logits = [], []
    for k in range(0, len(clips), batch_size):
        f = encoder.features(normalise(torch.from_numpy(clips[k : k + batch_size])))
        feats.append(f)
        logits.append(encoder.head(f))
    features = torch.cat(feats)
    out = {"features": features.numpy(), "encoder_logits": torch.cat(logits).numpy()}
    if temporal is not None:
        temporal.eval()
        out["chain_logits"] = temporal_reference(temporal, out["features"])
    return out


@torch.no_grad()
def temporal_reference(temporal: MSTCN, features: np.ndarray) -> np.ndarray:
    """The temporal net's last stage on ``L×D`` features, as ``L×C`` logits."""
    x = torch.from_numpy(np.ascontiguousarray(features.T))[None]
    return temporal(x)[-1][0].T.contiguous().numpy()


def onnx_outputs(bundle_dir: Path, spec: ChainSpec, clips: np.ndarray,
                 reference_features: np.ndarray | None = None) -> Outputs:
    """The ONNX chain's outputs on ``clips`` (onnxruntime, CPU provider). With
    ``reference_features`` the temporal graph also runs on those (``temporal_logits``)."""
    enc = make_session(bundle_dir / spec.encoder.file_onnx, providers=[CPU])
    features, logits = enc.run(["features", "logits"], {"clips": np.ascontiguousarray(clips)})
    out = {"features": features, "encoder_logits": logits}
    if spec.temporal is not None:
        tmp = make_session(bundle_dir / spec.temporal.file_onnx, providers=[CPU])

        def run(f: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(f.T[None], dtype=np.float32)
            return tmp.run(["logits"], {"features": x})[0][0].T

        out["chain_logits"] = run(features)
        if reference_features is not None:
            out["temporal_logits"] = run(reference_features)
    return out


def stage_parity(reference: np.ndarray, got: np.ndarray) -> StageParity:
    """Largest absolute difference and the share of rows whose argmax agrees."""
    if reference.shape != got.shape:
        return StageParity(max_abs_diff=float("inf"), top1_agreement=0.0)
    diff = np.abs(reference.astype(np.float64) - got.astype(np.float64))
    top1 = float(np.mean(reference.argmax(-1) == got.argmax(-1))) if len(reference) else 1.0
    worst = float(diff.max()) if diff.size else 0.0
    return StageParity(max_abs_diff=worst if np.isfinite(worst) else float("inf"),
                       top1_agreement=top1)


def compare(reference: Outputs, got: Outputs, tolerance: float = TOLERANCE) -> Parity:
    """Parity of ONNX outputs ``got`` against torch ``reference`` (see the module docstring)."""
    stages = {"encoder": stage_parity(reference["encoder_logits"], got["encoder_logits"]),
              "features": stage_parity(reference["features"], got["features"])}
    if "chain_logits" in reference:
        stages["chain"] = stage_parity(reference["chain_logits"], got["chain_logits"])
        if "temporal_logits" in got:
            stages["temporal"] = stage_parity(reference["chain_logits"], got["temporal_logits"])
    return summarise(stages, tolerance)


def summarise(stages: dict[str, StageParity], tolerance: float = TOLERANCE) -> Parity:
    gated = {k: v for k, v in stages.items() if k.split(".")[-1] in GATED}
    worst = max(s.max_abs_diff for s in gated.values())
    top1 = min(s.top1_agreement for s in gated.values())
    reasons = [f"{k}: max |Δlogit| {s.max_abs_diff:.3g} > {tolerance:g}"
               for k, s in gated.items() if not s.max_abs_diff <= tolerance]
    reasons += [f"{k}: top-1 agrees on {s.top1_agreement:.1%} of the golden clips"
                for k, s in gated.items() if s.top1_agreement < 1.0]
    return Parity(max_abs_diff=worst, top1_agreement=top1, passed=not reasons, opset=OPSET,
                  tolerance=tolerance, stages=stages, reason="; ".join(reasons) or None)


def failed(reason: str) -> Parity:
    """The parity of a chain whose ONNX graphs could not even be run."""
    return Parity(max_abs_diff=float("inf"), top1_agreement=0.0, passed=False, reason=reason)
