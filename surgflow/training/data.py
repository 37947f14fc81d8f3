"""What a rank trains on, built inside the rank from dataset views.

Only the recipe and pinned dataset versions (``dataset@N``) cross into a rank; each rank
resolves the same immutable views (resolution is deterministic) and builds its own datasets, so
no tensor or open video reader ever crosses a process boundary. Clips, samplers and decoding are
the data layer's (:mod:`surgflow.data.views`, :mod:`surgflow.data.clips`); this module only
wires them to a recipe and a rank, and adds the per-second labels a chain's stage 2 reads. The
per-second clip is :mod:`surgflow.data.seconds`'s; ``per_second_clip`` is also named here for
callers that resolve per-second views through this module.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from surgflow.data.clip_sampling import ClipSpec, frame_step
from surgflow.data.clips import ClipDataset
from surgflow.data.proxies import ProxyStore
from surgflow.data.seconds import per_second_clip as per_second_clip  # re-exported, see above
from surgflow.data.seconds import second_frames
from surgflow.data.views import ResolvedView, ViewSpec, pin_source, resolve_view
from surgflow.errors import BadInput

SPLITS = ("train", "val")


def pin_sources(sources: list[str], home: Path) -> list[str]:
    """``dataset`` → ``dataset@N`` (its latest version now), so every rank and every restart of
    a run reads the same immutable versions."""
    from surgflow.data.versions import DatasetStore

    store = DatasetStore(home)
    out = []
    for text in sources:
        dataset, version = pin_source(store, text)
        store.manifest(dataset, version)  # NotFound naming the versions that exist
        out.append(f"{dataset}@{version}")
    return out


def view_spec(
    recipe: Any, sources: list[str], split: str | None, clip: ClipSpec | None = None
) -> ViewSpec:
    """The recipe's view (``recipe.data``) over ``sources``, of ``split`` (None: every split),
    on ``clip`` (default the recipe's); its balancing applies to training clips only."""
    update: dict[str, Any] = {"sources": sources, "split": split}
    if clip is not None:
        update["clip"] = clip
    if split != "train":
        update |= {"balance": "none", "balance_params": {}}
    return recipe.data.model_copy(update=update)


def resolve(recipe: Any, sources: list[str], split: str, home: Path,
            clip: ClipSpec | None = None) -> ResolvedView:
    return resolve_view(view_spec(recipe, sources, split, clip), home)


def collate(items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """ClipDataset items → ``(B×C×T×H×W clips, B labels)``."""
    return (torch.stack([it["clip"] for it in items]),
            torch.as_tensor([it["label"] for it in items], dtype=torch.long))


def _loader_kw(num_workers: int, cuda: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {"num_workers": num_workers, "collate_fn": collate, "pin_memory": cuda}
    if num_workers:
        kw |= {"persistent_workers": True, "prefetch_factor": 4}
        # Dask worker processes default to "spawn", which re-imports torch in every loader
        # worker (seconds each). Fork, as torchrun-launched ranks do; readers are opened lazily
        # in the worker, so no decord reader crosses the fork.
        if "fork" in multiprocessing.get_all_start_methods():
            kw["multiprocessing_context"] = "fork"
    return kw


def write_proxies(view: ResolvedView, home: Path) -> None:
    """Write the short-GOP proxies the view's clip spec can read (once; later calls find them).

    Run on the driver before the ranks start, so ranks only look proxies up."""
    ClipDataset.from_view(view, proxies=ProxyStore(home), make_proxies=True)


def _dataset(view: ResolvedView, home: Path | None) -> ClipDataset:
    # uint8 clips cross from loader workers at a quarter of float32's bytes; the training loop
    # normalises them on the device (see loop.as_input).
    return ClipDataset.from_view(view, proxies=ProxyStore(home) if home else None,
                                 dtype=torch.uint8)


def train_loader(view: ResolvedView, optim: Any, rank: int, world: int,
                 cuda: bool = False, home: Path | None = None) -> tuple[DataLoader, Any]:
    """Training clips of ``view`` for one rank, read in decode-friendly chunks, balanced as the
    view says; returns the loader and its sampler (``set_epoch`` it every epoch)."""
    if len(view) == 0:
        raise BadInput(f"view {view.report()['sources']} has no labelled training clips")
    sampler = view.sampler(batch_size=optim.batch_size, num_workers=optim.num_workers,
                           chunk_size=optim.chunk_size, rank=rank, world_size=world,
                           num_samples=optim.clips_per_epoch)
    loader = DataLoader(_dataset(view, home), batch_size=optim.batch_size,
                        sampler=sampler, **_loader_kw(optim.num_workers, cuda))
    return loader, sampler


def val_loader(view: ResolvedView, optim: Any, rank: int, world: int,
               cuda: bool = False, home: Path | None = None) -> DataLoader:
    """This rank's ``rank::world`` share of the validation clips, in order, none repeated."""
    ds = _dataset(view, home)
    return DataLoader(Subset(ds, range(rank, len(ds), world)), batch_size=optim.batch_size,
                      **_loader_kw(optim.num_workers, cuda))


def second_labels(view: ResolvedView) -> dict[str, np.ndarray]:
    """Per-second labels of each video of a per-second view (see
    :func:`~surgflow.data.seconds.per_second_clip`), one per second of
    :func:`~surgflow.data.seconds.second_frames`; -1 marks a second with no label (unlabelled,
    filtered out, or below min_confidence)."""
    out: dict[str, np.ndarray] = {}
    for i, v in enumerate(view.videos):
        step = frame_step(v.fps, 1.0)
        labels = np.full(len(second_frames(v.fps, v.num_frames)), -1, dtype=np.int64)
        mine = view.video == i
        labels[view.start[mine] // step] = view.label[mine]
        out[v.video_id] = labels
    return out
