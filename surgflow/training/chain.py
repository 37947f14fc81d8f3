"""Chained models: a stage-1 clip model whose per-second features feed a stage-2 temporal model.

Each stage is versioned by the content hash of its weights; the chain's version is derived from
both, so swapping either stage makes a new chain version while a stage keeps its own identity.
Stage 2 reads stage-1 features from the :class:`~surgflow.training.features.FeatureCache`,
filled here once per (stage-1 version, video).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.clips import ClipDataset
from surgflow.data.seconds import second_clips
from surgflow.data.views import ViewVideo
from surgflow.training.data import collate
from surgflow.training.features import FeatureCache


def chain_version(stage_versions: Sequence[str]) -> str:
    """The version of a chain: a hash of its stages' versions, in order."""
    return hashlib.sha256(":".join(stage_versions).encode()).hexdigest()[:16]


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    model_version: str,
    videos: Sequence[ViewVideo],
    cache: FeatureCache,
    *,
    clip: ClipSpec,
    device: torch.device,
    batch_size: int = 32,
) -> dict[str, int]:
    """Fill the cache with per-second features (``L×D``) of ``videos`` not cached yet."""
    model.eval()
    computed = skipped = 0
    for v in videos:
        if cache.has(model_version, v.sha256):
            skipped += 1
            continue
        loader = DataLoader(ClipDataset.of(second_clips(v, clip)), batch_size=batch_size,
                            collate_fn=collate)
        feats = [model.features(x.to(device)).float().cpu() for x, _ in loader]
        cache.put(model_version, v.sha256, torch.cat(feats))
        computed += 1
    return {"computed": computed, "cached": skipped}


class HeadOverTime(torch.nn.Module):
    """An encoder's linear head applied at every second of a ``B×D×L`` feature sequence, shaped
    like a one-stage temporal network's output (``1×B×C×L``): the chain without its temporal
    stage, scored the way the chain is."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.transpose(1, 2)).transpose(1, 2).unsqueeze(0)


class SequenceDataset(Dataset):
    """Whole-video sequences: ``(D×L features from the cache, L per-second labels)``."""

    def __init__(self, videos: Sequence[ViewVideo], labels: dict[str, np.ndarray],
                 cache: FeatureCache, model_version: str):
        self.videos = [v for v in videos if v.video_id in labels]
        self.labels, self.cache, self.version = labels, cache, model_version

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.videos[i]
        feats = self.cache.get(self.version, v.sha256)
        if feats is None:
            raise RuntimeError(
                f"feature cache has no entry for video {v.video_id} (sha256 {v.sha256[:12]}…) "
                f"under stage-1 version {self.version}"
            )
        labels = torch.from_numpy(self.labels[v.video_id])
        n = min(len(labels), feats.shape[0])
        return feats[:n].t().contiguous(), labels[:n]


def collate_sequences(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """Pad a batch of sequences to the longest: padded labels are -1 (ignored by the loss)."""
    longest = max(x.shape[1] for x, _ in batch)
    xs = torch.zeros(len(batch), batch[0][0].shape[0], longest)
    ys = torch.full((len(batch), longest), -1, dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        xs[i, :, : x.shape[1]] = x
        ys[i, : y.shape[0]] = y
    return xs, ys
