"""Stages taken from the production chain instead of trained (``from: production``).

The driver resolves the production chain bundle of the recipe's procedure (it knows the
registry; training does not) and passes its directory in the job as ``job["reuse"]``:
``{"encoder": dir}`` and/or ``{"temporal": dir}``. A rank loads the stage from the bundle's torch
weights (:func:`surgflow.training.stage_files.load_torch_chain`) after checking that it fits the
recipe: the same class labels in the same order and, for an encoder, the same clip sampling
(the features the temporal stage trains on must be those the chain will compute).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from surgflow.errors import BadInput


def check_fits(spec: Any, bundle: Path, stage: str, *, labels: list[str], clip: Any) -> None:
    """BadInput when the bundle's chain cannot stand in for ``stage`` of this recipe."""
    if list(spec.labels) != list(labels):
        raise BadInput(
            f"production chain {bundle}: its labels {list(spec.labels)} differ from the "
            f"procedure's {list(labels)}; its {stage} stage cannot be reused"
        )
    if stage == "encoder":
        theirs = {k: getattr(spec.clip, k) for k in ("frames", "stride", "fps", "size")}
        ours = {k: getattr(clip, k) for k in theirs}
        if theirs != ours:
            raise BadInput(
                f"production chain {bundle}: its encoder reads clips {theirs} but the recipe's "
                f"clip is {ours}; set the recipe's clip to production's to reuse its encoder"
            )
    if stage == "temporal" and spec.temporal is None:
        raise BadInput(f"production chain {bundle} has no temporal stage to reuse")


def load_stage(bundle: str | Path, stage: str, *, labels: list[str], clip: Any) -> nn.Module:
    """The torch module of ``stage`` (``encoder`` or ``temporal``) of the chain in ``bundle``."""
    from surgflow.training.stage_files import load_torch_chain

    bundle = Path(bundle)
    encoder, temporal, spec = load_torch_chain(bundle)
    check_fits(spec, bundle, stage, labels=labels, clip=clip)
    module = encoder if stage == "encoder" else temporal
    assert module is not None
    return module
