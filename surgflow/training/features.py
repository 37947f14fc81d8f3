"""Cache of stage-1 features per whole video, keyed by (stage-1 model version, video sha256).

A chain's stage 2 trains on the per-second stage-1 features of whole videos. They are computed
once per (model, video) and stored under ``SURGFLOW_HOME/features/<model_version>/<sha256>.pt``
as an ``L×D`` float16 tensor (labels are not cached: they belong to a dataset version,
features only to a model and a video). Entries are content-addressed and published
with a no-overwrite link, so any rank may fill the cache: two ranks computing the same entry
write identical content and one of them wins.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from surgflow.storage import write_exclusive

_HEX = re.compile(r"^[0-9a-f]{8,64}$")


class FeatureCache:
    def __init__(self, home: Path):
        self.root = Path(home) / "features"

    def path(self, model_version: str, sha256: str) -> Path:
        for what, v in (("model version", model_version), ("video sha256", sha256)):
            if not _HEX.match(v):
                raise ValueError(f"feature cache key: {what} {v!r} is not a hex digest")
        return self.root / model_version / f"{sha256}.pt"

    def has(self, model_version: str, sha256: str) -> bool:
        return self.path(model_version, sha256).is_file()

    def get(self, model_version: str, sha256: str) -> torch.Tensor | None:
        p = self.path(model_version, sha256)
        if not p.is_file():
            return None
        return torch.load(p, map_location="cpu", weights_only=True).float()

    def put(self, model_version: str, sha256: str, features: torch.Tensor) -> bool:
        """Store ``L×D`` features; False if the entry already existed."""
        buf = io.BytesIO()
        torch.save(features.detach().cpu().half().contiguous(), buf)
        return write_exclusive(self.path(model_version, sha256), buf.getvalue())
