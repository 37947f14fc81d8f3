"""The chain bundle's format, and reading and checking one without torch.

A chain bundle is a directory, the unit the registry stores and the runner loads::

    chain.json      ChainSpec
    encoder.pt      {"architecture", "num_classes", "dropout", "state_dict"}
    encoder.onnx    "clips" uint8 B×3×T×S×S -> "features" float32 B×D, "logits" float32 B×C
    temporal.pt     {"spec", "in_dim", "num_classes", "state_dict"}               (chains only)
    temporal.onnx   "features" float32 B×D×L -> "logits" float32 B×C×L            (chains only)
    golden.npz      "clips" uint8 L×3×T×S×S, "video_id", and the torch chain's reference
                    outputs on them: "encoder_logits" L×C, "features" L×D, "chain_logits" L×C
    parity.json     Parity

:mod:`surgflow.export` writes bundles and runs parity (torch, onnxruntime); this module is what
a bundle says about itself (:class:`ChainSpec`, :class:`Parity`, the names of its files) and
reads it back: :func:`read_spec`, :func:`check_files`, :func:`read_golden`,
:func:`file_hashes`. It sits in the data layer, below training, because training reads a bundle
too (a stage taken from production) and the ONNX runner, the registry and the service read it
without training or torch: a file format, like a dataset manifest, with no model code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.video import sha256_file
from surgflow.errors import BadInput

OPSET = 17
TOLERANCE = 1e-4  # largest |Δlogit| between torch fp32 and onnxruntime that passes parity

CHAIN_FILE = "chain.json"
PARITY_FILE = "parity.json"
GOLDEN_FILE = "golden.npz"
ENCODER_ONNX, ENCODER_PT = "encoder.onnx", "encoder.pt"
TEMPORAL_ONNX, TEMPORAL_PT = "temporal.onnx", "temporal.pt"


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


def read_spec(bundle_dir: Path) -> ChainSpec:
    """A bundle's ``chain.json``; BadInput naming the file when it is missing or invalid."""
    path = Path(bundle_dir) / CHAIN_FILE
    if not path.is_file():
        raise BadInput(f"chain bundle {bundle_dir}: file {CHAIN_FILE} is missing")
    try:
        return ChainSpec.model_validate_json(path.read_bytes())
    except ValueError as e:
        raise BadInput(f"chain bundle {bundle_dir}: {CHAIN_FILE} is not a valid chain spec: "
                       f"{_short(e, 300)}") from e


def check_files(bundle_dir: Path, spec: ChainSpec) -> None:
    """BadInput naming the first file of the bundle that is missing."""
    for name in spec.files:
        if not (Path(bundle_dir) / name).is_file():
            raise BadInput(f"chain bundle {bundle_dir}: file {name} is missing")


def read_golden(bundle_dir: Path, spec: ChainSpec) -> dict[str, np.ndarray]:
    """The bundle's golden clips and reference outputs (``golden.npz``); BadInput naming the
    file when it cannot be read or lacks what the chain's stages need."""
    path = Path(bundle_dir) / GOLDEN_FILE
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


def file_hashes(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``bundle_dir``, by path relative to it (read in chunks)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BadInput(f"chain bundle {root} does not exist")
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _short(e: BaseException, limit: int = 200) -> str:
    return " ".join(str(e).split())[:limit] or type(e).__name__
