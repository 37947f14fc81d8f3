"""The chain a finished training run made, read back from its run record.

A run's chain is its stages' last checkpoints (``runs/<id>/checkpoints/<stage>/``) on the
recipe it kept (``recipe.json``), with the stages it did not train taken from the bundle it
reused (the production chain, for a recipe with ``from: production``); its golden video is the
first validation video of the run's view. :func:`surgflow.export.bundle.bundle_from_run` writes
the bundle of it: the run record is training's, writing bundles is export's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.data.views import ViewVideo
from surgflow.errors import BadInput
from surgflow.training import checkpoints, data, stage_files
from surgflow.training.models import MSTCN, ClipModel, build_clip_model, build_temporal_model
from surgflow.training.recipe import parse_recipe


@dataclass(frozen=True)
class RunChain:
    """What a run's chain bundle is made of (the arguments of ``build_bundle``)."""

    procedure: str
    labels: list[str]
    clip: ClipSpec
    encoder: ClipModel
    temporal: MSTCN | None
    temporal_spec: Any  # the temporal stage's TemporalSpec (or its dict, when reused)
    golden_video: ViewVideo


def run_chain(run_dir: Path, *, home: Path, reuse: Path | None = None) -> RunChain:
    """The chain of the finished training run in ``run_dir``, from its last checkpoints.

    ``reuse`` is a bundle (e.g. production's) whose stages stand in for those the run did not
    train: a recipe that takes its temporal stage ``from: production`` has no temporal
    checkpoint of its own."""
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise BadInput(f"training run {run_dir}: {recipe_file.name} is missing")
    recipe = parse_recipe(json.loads(recipe_file.read_text()), origin=f"run {run_dir.name}")
    labels = list(ProcedureCatalog(home).get(recipe.procedure).labels)
    reused = stage_files.load_torch_chain(reuse) if reuse is not None else None

    clip_ckpt = checkpoints.latest(run_dir, "clip")
    if clip_ckpt is not None:
        encoder = build_clip_model(recipe.model.architecture, len(labels),
                                   dropout=recipe.model.dropout)
        stage_files.load_weights(encoder, _read_checkpoint(clip_ckpt)["model"], clip_ckpt)
    elif reused is not None:
        encoder = reused[0]
    else:
        raise BadInput(f"training run {run_dir}: no checkpoint of stage 'clip' under "
                       f"{checkpoints.stage_dir(run_dir, 'clip')}")

    temporal, temporal_spec = None, None
    temporal_ckpt = checkpoints.latest(run_dir, "temporal")
    if temporal_ckpt is not None:
        if recipe.temporal is None:
            raise BadInput(f"training run {run_dir}: has temporal checkpoints but its recipe "
                           "has no temporal stage")
        temporal_spec = recipe.temporal
        temporal = build_temporal_model(temporal_spec, encoder.feature_dim, len(labels))
        stage_files.load_weights(temporal, _read_checkpoint(temporal_ckpt)["model"],
                                 temporal_ckpt)
    elif reused is not None and reused[1] is not None:
        temporal = reused[1]
        temporal_spec = stage_files.read(Path(reuse) / reused[2].temporal.file_torch)["spec"]
    elif recipe.temporal is not None:
        raise BadInput(f"training run {run_dir}: its recipe has a temporal stage but there is "
                       f"no checkpoint under {checkpoints.stage_dir(run_dir, 'temporal')}")

    val = data.resolve(recipe, recipe.data.sources, "val", home)
    if not val.videos:
        raise BadInput(f"training run {run_dir}: the val split of {recipe.data.sources} has "
                       "no videos to take golden clips from")
    return RunChain(procedure=recipe.procedure, labels=labels, clip=recipe.clip,
                    encoder=encoder, temporal=temporal, temporal_spec=temporal_spec,
                    golden_video=val.videos[0])


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = checkpoints.load(path)
    except Exception as e:
        raise BadInput(f"checkpoint {path} cannot be read: {stage_files.short(e)}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise BadInput(f"checkpoint {path} holds no model weights")
    return state
