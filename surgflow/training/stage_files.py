"""A chain stage's torch file in a bundle, written from its module and read back into one.

::

    encoder.pt    {"architecture", "num_classes", "dropout", "state_dict"}
    temporal.pt   {"spec", "in_dim", "num_classes", "state_dict"}

The bundle writer (:func:`surgflow.export.bundle.build_bundle`) stores :func:`encoder_file` and
:func:`temporal_file`; :func:`load_torch_chain` rebuilds a bundle's torch stages from them, for
training (a stage taken from the production chain, :mod:`surgflow.training.reuse`) and for
parity, which compares the ONNX graphs with the torch chain they came from. The rest of the
bundle is read without torch (:mod:`surgflow.data.chain_bundle`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from surgflow.data.chain_bundle import ChainSpec, read_spec
from surgflow.errors import BadInput
from surgflow.storage import write_atomic
from surgflow.training.models import MSTCN, ClipModel, build_clip_model, build_temporal_model
from surgflow.training.recipe import TemporalSpec


def encoder_file(encoder: ClipModel) -> dict[str, Any]:
    """What ``encoder.pt`` holds of ``encoder``."""
    return {"architecture": encoder.arch_name, "num_classes": encoder.head.out_features,
            "dropout": float(encoder.dropout.p), "state_dict": encoder.state_dict()}


def temporal_file(temporal: MSTCN, spec: Any = None) -> dict[str, Any]:
    """What ``temporal.pt`` holds of ``temporal``; ``spec`` is the recipe's ``temporal``
    section (a TemporalSpec or its dict), read off the network when omitted."""
    return {"spec": _temporal_spec(temporal, spec), "in_dim": temporal.in_dim,
            "num_classes": temporal.num_classes, "state_dict": temporal.state_dict()}


def save(path: Path, obj: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def read(path: Path) -> dict[str, Any]:
    """A stage file's contents; BadInput naming the file when it is missing or not one."""
    if not Path(path).is_file():
        raise BadInput(f"chain bundle {Path(path).parent}: file {Path(path).name} is missing")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"weights file {path} cannot be read: {short(e)}") from e
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise BadInput(f"weights file {path} is not a surgflow stage file (no state_dict)")
    return obj


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """``state`` into ``model``; BadInput naming ``path`` when the weights do not fit it."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise BadInput(f"weights in {path} do not fit the model: {short(e)}") from e


def load_torch_chain(bundle_dir: Path) -> tuple[ClipModel, MSTCN | None, ChainSpec]:
    """The bundle's torch stages (eval mode, CPU) and its spec."""
    bundle_dir = Path(bundle_dir)
    spec = read_spec(bundle_dir)
    path = bundle_dir / spec.encoder.file_torch
    enc = read(path)
    encoder = build_clip_model(enc["architecture"], int(enc["num_classes"]),
                               dropout=float(enc.get("dropout", 0.0)))
    load_weights(encoder, enc["state_dict"], path)
    temporal = None
    if spec.temporal is not None:
        path = bundle_dir / spec.temporal.file_torch
        tmp = read(path)
        temporal = build_temporal_model(TemporalSpec.model_validate(tmp["spec"]),
                                        int(tmp["in_dim"]), int(tmp["num_classes"]))
        load_weights(temporal, tmp["state_dict"], path)
        temporal.eval()
    return encoder.eval(), temporal, spec


def short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _temporal_spec(model: MSTCN, spec: Any) -> dict[str, Any]:
    if spec is None:
        first = model.stages[0]
        spec = TemporalSpec(stages=len(model.stages), layers=len(first.layers),
                            channels=first.inp.out_channels,
                            dropout=float(first.layers[0].dropout.p), causal=model.causal)
    elif isinstance(spec, dict):
        spec = TemporalSpec.model_validate(spec)
    return spec.model_dump(mode="json")
