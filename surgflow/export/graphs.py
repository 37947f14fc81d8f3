"""The ONNX graphs of a chain's stages, exported with ``torch.onnx.export`` at a pinned opset.

The legacy TorchScript exporter (``dynamo=False``) is used: it traces the eval-mode module once
and writes dynamic batch (and time) axes as symbolic dimensions, which is what the temporal
network's dilated, padded ``Conv1d`` stack needs to run at any sequence length.

The encoder graph takes raw uint8 clips and normalises them inside the graph with exactly the
training normalisation (:func:`surgflow.data.clips.normalise`), so a client never has to know the
mean and std; it returns both the features the temporal stage reads and the encoder head's
logits. The temporal graph returns the last MS-TCN stage's logits only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from surgflow.data.chain_bundle import OPSET
from surgflow.data.clips import normalise
from surgflow.training.models import MSTCN, ClipModel


class EncoderGraph(nn.Module):
    """uint8 clips ``B×3×T×S×S`` → (features ``B×D``, logits ``B×C``)."""

    def __init__(self, model: ClipModel):
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(normalise(clips))
        return features, self.model.head(features)


class TemporalGraph(nn.Module):
    """Features ``B×D×L`` → the last stage's logits ``B×C×L``."""

    def __init__(self, model: MSTCN):
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)[-1]


def export_encoder(model: ClipModel, clips: torch.Tensor, path: Path) -> Path:
    """Write ``model``'s encoder graph to ``path``; ``clips`` is an example uint8 batch."""
    return _export(EncoderGraph(model), clips, path, ["clips"], ["features", "logits"],
                   {"clips": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}})


def export_temporal(model: MSTCN, features: torch.Tensor, path: Path) -> Path:
    """Write ``model``'s temporal graph to ``path``; ``features`` is an example ``B×D×L``."""
    return _export(TemporalGraph(model), features, path, ["features"], ["logits"],
                   {"features": {0: "batch", 2: "time"}, "logits": {0: "batch", 2: "time"}})


def _export(module: nn.Module, example: torch.Tensor, path: Path, inputs: list[str],
            outputs: list[str], dynamic: dict[str, dict[int, str]]) -> Path:
    import onnx

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer warns that shape arithmetic becomes constants; the dynamic axes
            # declared here keep it symbolic, and parity at two lengths checks that it did
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                              do_constant_folding=True)
    finally:
        module.train(was_training)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return Path(path)
