"""What a chain bundle says about itself: :class:`ChainSpec` (``chain.json``) and
:class:`Parity` (``parity.json``), and the names of the bundle's files.

A chain bundle is a directory, the unit the registry stores and the runner loads::

    chain.json      ChainSpec
    encoder.pt      {"architecture", "num_classes", "dropout", "state_dict"}
    encoder.onnx    "clips" uint8 B×3×T×S×S -> "features" float32 B×D, "logits" float32 B×C
    temporal.pt     {"spec", "in_dim", "num_classes", "state_dict"}               (chains only)
    temporal.onnx   "features" float32 B×D×L -> "logits" float32 B×C×L            (chains only)
    golden.npz      "clips" uint8 L×3×T×S×S, "video_id", and the torch chain's reference
                    outputs on them: "encoder_logits" L×C, "features" L×D, "chain_logits" L×C
    parity.json     Parity
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from surgflow.data.clip_sampling import ClipSpec

OPSET = 17
TOLERANCE = 1e-4  # largest |Δlogit| between torch fp32 and onnxruntime that passes parity

CHAIN_FILE = "chain.json"
PARITY_FILE = "parity.json"
GOLDEN_FILE = "golden.npz"


class StageInfo(BaseModel, frozen=True):
    """One stage of a chain: what it is, its weights' version and its files in the bundle."""

    name: Literal["encoder", "temporal"]
    architecture: str
    version: str  # training.checkpoints.weights_digest of the stage's weights
    file_onnx: str
    file_torch: str
    feature_dim: int  # the encoder's output features; the temporal stage's input features


class ChainSpec(BaseModel, frozen=True):
    """A chain: its procedure, class labels, clip sampling and stages (``chain.json``)."""

    procedure: str
    labels: list[str]  # class index order
    clip: ClipSpec
    sample_fps: float = 1.0  # predictions per second: the rate the temporal stage runs at
    stages: list[StageInfo] = Field(min_length=1)
    chain_version: str
    opset: int = OPSET

    def stage(self, name: str) -> StageInfo | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def encoder(self) -> StageInfo:
        stage = self.stage("encoder")
        assert stage is not None, "a chain always starts with its encoder"
        return stage

    @property
    def temporal(self) -> StageInfo | None:
        return self.stage("temporal")

    @property
    def files(self) -> list[str]:
        """Every file the bundle must hold."""
        out = [CHAIN_FILE, GOLDEN_FILE, PARITY_FILE]
        for s in self.stages:
            out += [s.file_onnx, s.file_torch]
        return out


class StageParity(BaseModel):
    """ONNX against torch on one output of the golden inputs."""

    # a graph that cannot run differs by infinity, written "Infinity" (JSON has no inf)
    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    max_abs_diff: float
    top1_agreement: float


class Parity(BaseModel):
    """Parity of a bundle's ONNX chain against its torch chain on the golden inputs
    (``parity.json``). ``stages``: ``encoder`` (the encoder head's logits), ``features``
    (encoder features; reported, not gated), ``temporal`` (the ONNX temporal stage on the
    torch features) and ``chain`` (the whole ONNX chain against the whole torch chain)."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    max_abs_diff: float
    top1_agreement: float
    passed: bool
    opset: int = OPSET
    tolerance: float = TOLERANCE
    stages: dict[str, StageParity] = Field(default_factory=dict)
    reason: str | None = None  # why it failed, in words; None when it passed
