"""ONNX export of trained chains, the chain bundle, and parity against torch.

Writing a bundle and parity need torch (:mod:`surgflow.export.bundle`); what a bundle says
about itself and reading it back do not, and live in :mod:`surgflow.data.chain_bundle`. The
names below are resolved on first use, so importing this package (or
:mod:`surgflow.export.sessions`, which the ONNX runner uses) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from surgflow.data.chain_bundle import (
        OPSET,
        TOLERANCE,
        ChainSpec,
        Parity,
        StageInfo,
        StageParity,
        file_hashes,
        read_spec,
    )
    from surgflow.export.bundle import build_bundle, bundle_from_run, check_parity

_HOMES = {
    **dict.fromkeys(["build_bundle", "bundle_from_run", "check_parity"], "surgflow.export.bundle"),
    **dict.fromkeys(["OPSET", "TOLERANCE", "ChainSpec", "Parity", "StageInfo", "StageParity",
                     "file_hashes", "read_spec"], "surgflow.data.chain_bundle"),
}

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
    "read_spec",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
