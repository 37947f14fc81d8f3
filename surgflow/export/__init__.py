"""ONNX export of trained chains, the chain bundle, and parity against torch."""

from surgflow.export.bundle import (
    build_bundle,
    bundle_from_run,
    check_parity,
    file_hashes,
    load_torch_chain,
    read_spec,
)
from surgflow.export.spec import OPSET, TOLERANCE, ChainSpec, Parity, StageInfo, StageParity

__all__ = [
    "OPSET",
    "TOLERANCE",
    "ChainSpec",
    "Parity",
    "StageInfo",
    "StageParity",
    "build_bundle",
    "bundle_from_run",
    "check_parity",
    "file_hashes",
    "load_torch_chain",
    "read_spec",
]
