"""Recipe files: what to train, on which data, how, and on what resources.

A recipe is YAML validated by the pydantic models below. Loading never half-succeeds: a bad
recipe raises :class:`~surgflow.errors.ConfigError` whose message names the file, each bad field
(as a dotted path), the value found and what is allowed.

A recipe with a ``temporal`` section defines a chain: ``model`` is stage 1 (a frame encoder or a
clip model trained on short clips) and ``temporal`` is stage 2, a causal temporal network trained
on the per-second stage-1 features of whole videos.

Either stage may instead be taken from the procedure's production chain (``model: {from:
production}`` or ``temporal: {from: production}``), so that a candidate can be "production with
one model swapped"; such a section names nothing else, since the stage is what production runs.

The ``gate`` section is kept as written and validated by the gate's own module
(:func:`surgflow.evaluation.thresholds.parse_gate`), which whoever loads a recipe to train it
calls next (the CLI, the training and pipeline flows): evaluation sits above training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from surgflow.data.clip_sampling import ClipSpec
from surgflow.data.views import ViewSpec
from surgflow.errors import ConfigError, describe_validation, dotted

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Reusable(_Strict):
    """A stage section that may say ``from: production`` instead of describing the stage."""

    # "from" is a Python keyword: the field is ``from_``, read and written as ``from``
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)

    from_: Literal["production"] | None = Field(
        default=None, alias="from",
        description="take this stage from the procedure's production chain instead of training it",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_alone(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("from", data.get("from_")) is None:
            return data
        defaults = cls.model_construct().model_dump(mode="json")
        # a dumped recipe repeats every default; only values that differ describe a stage
        named = sorted(k for k, v in data.items()
                       if k not in ("from", "from_") and defaults.get(k, object()) != v)
        if named:
            raise ValueError(
                f"'from: {data.get('from', data.get('from_'))}' reuses a trained stage, so it "
                f"cannot be combined with {', '.join(repr(k) for k in named)}; drop those "
                "fields or drop 'from'"
            )
        return data

    @property
    def reused(self) -> bool:
        return self.from_ is not None


class ModelSpec(_Reusable):
    """Stage-1 model (or the only model): an architecture picked by name from the registry."""

    architecture: str = "tiny2d"
    pretrained: Path | None = Field(
        default=None, description="local weights file (torchvision state dict); never downloaded"
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @field_validator("architecture")
    @classmethod
    def _known(cls, v: str) -> str:
        from surgflow.training.models import CLIP_ARCHITECTURES

        if v not in CLIP_ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {v!r}; known: {', '.join(sorted(CLIP_ARCHITECTURES))}"
            )
        return v


class OptimSpec(_Strict):
    epochs: int = Field(default=10, ge=1, le=10_000)
    batch_size: int = Field(default=8, ge=1, le=4096, description="per rank")
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    weight_decay: float = Field(default=1e-4, ge=0.0, le=1.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_size: int = Field(default=10, ge=1, description="epochs between lr drops (schedule=step)")
    amp: bool = Field(default=True, description="mixed precision; used on GPU only")
    seed: int = Field(default=0, ge=0)
    num_workers: int = Field(default=0, ge=0, le=64, description="DataLoader workers per rank")
    clips_per_epoch: int | None = Field(
        default=None, ge=1, description="training clips drawn per epoch (all ranks together)"
    )
    chunk_size: int = Field(
        default=16, ge=1, description="consecutive clips of a video read together (decode order)"
    )


class AugmentSpec(_Strict):
    """Training-time augmentation of stage-1 clips (the same transform for every frame of a
    clip); never applied to validation, to features for the temporal stage, or at inference."""

    enabled: bool = True
    crop_scale: tuple[float, float] = Field(
        default=(0.6, 1.0), description="share of the frame's area a random crop keeps (min, max)")
    crop_ratio: tuple[float, float] = Field(
        default=(0.75, 1.333), description="aspect ratio range of the random crop")
    flip: float = Field(default=0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    brightness: float = Field(default=0.25, ge=0.0, lt=1.0, description="factor in 1 ± this")
    contrast: float = Field(default=0.25, ge=0.0, lt=1.0, description="factor in 1 ± this")
    saturation: float = Field(default=0.25, ge=0.0, lt=1.0, description="factor in 1 ± this")
    hue: float = Field(default=0.03, ge=0.0, le=0.5, description="shift in ± this of the wheel")

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _range(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        low, high = v
        top = 1.0 if info.field_name == "crop_scale" else 10.0
        if not 0.0 < low <= high <= top:
            raise ValueError(f"must be [low, high] with 0 < low ≤ high ≤ {top:g}")
        return v


class TemporalSpec(_Reusable):
    """Stage 2 of a chain: a causal multi-stage temporal conv net over per-second features."""

    architecture: Literal["mstcn"] = "mstcn"
    stages: int = Field(default=2, ge=1, le=8)
    layers: int = Field(default=8, ge=1, le=16)
    channels: int = Field(default=64, ge=4, le=1024)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    causal: bool = True
    refine_encoder: bool = Field(
        default=True,
        description="start from the encoder's own predictions and learn corrections to them "
                    "(see models.MSTCN); false: predict from the features alone")
    keep_best: bool = Field(
        default=True,
        description="end with the epoch of best validation macro-F1; with refine_encoder, "
                    "epoch 0 is the encoder's own predictions, so the chain never ends below it")
    optim: OptimSpec = Field(
        default_factory=lambda: OptimSpec(epochs=20, batch_size=1, lr=5e-3, schedule="constant")
    )


class ResourceSpec(_Strict):
    world_size: int = Field(default=1, ge=1, le=1024, description="DDP ranks, one per Dask worker")
    gpus_per_rank: Literal[0, 1] = 0
    threads_per_rank: int | None = Field(default=None, ge=1, le=256)
    rendezvous_timeout_s: float = Field(default=120.0, gt=0.0)
    max_attempts: int = Field(default=3, ge=1, le=20, description="group restarts on a death")


class DriftTriggerSpec(_Strict):
    """Retrain when what the production model sees drifts from what it was trained on."""

    psi_above: float = Field(
        default=0.2, gt=0.0, le=10.0,
        description="population stability index of a watched feature above which a source "
                    "has drifted")
    min_videos: int = Field(
        default=5, ge=1, description="a source's videos in the window before it is judged")


class TriggerSpec(_Strict):
    """When this recipe retrains by itself."""

    cron: str | None = Field(default=None, description='e.g. "0 2 * * *" for nightly')
    growth_factor: float | None = Field(
        default=None, gt=1.0, description="retrain when the dataset grew by this factor"
    )
    new_source: bool = Field(default=False, description="retrain when a new source appears")
    drift: DriftTriggerSpec | None = Field(
        default=None, description="retrain when the inference stream drifts (drift watch)")


#: what a sweep may search: dotted recipe fields under these sections
SWEEPABLE = ("optim.", "augment.", "clip.", "temporal.", "model.dropout")


class SweepParam(_Strict):
    """One searched field: a number range (``low``, ``high``; ``log`` scale, ``step``) or
    ``choices``. Integers are searched as integers when both bounds are."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0.0)
    choices: list[Any] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> SweepParam:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("give either choices or a range (low, high), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give choices)")
        if not self.low < self.high:
            raise ValueError(f"low {self.low:g} must be below high {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError("a log range must be positive")
        return self


class SweepSpec(_Strict):
    """A hyper-parameter search over this recipe (``surgflow sweep``)."""

    trials: int = Field(default=10, ge=1, le=10_000)
    metric: str = Field(default="macro_f1",
                        description="the chain's validation metric the search optimises")
    direction: Literal["maximize", "minimize"] = "maximize"
    space: dict[str, SweepParam] = Field(min_length=1,
                                         description="dotted recipe field → its range")
    pruning: bool = Field(default=True, description="median pruning on the live metric")
    warmup_epochs: int = Field(default=1, ge=0,
                               description="epochs a trial runs before it may be pruned")
    seed: int = Field(default=0, ge=0)

    @field_validator("space")
    @classmethod
    def _fields(cls, v: dict[str, SweepParam]) -> dict[str, SweepParam]:
        for key in v:
            if not key.startswith(SWEEPABLE) or not _field_exists(key):
                raise ValueError(f"{key!r} is not a field a sweep may search (fields under "
                                 f"{', '.join(SWEEPABLE)})")
        return v


def _field_exists(dotted_key: str) -> bool:
    model: Any = Recipe
    for part in dotted_key.split("."):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return False
        ann = fields[part].annotation
        nested = [c for c in (ann, *getattr(ann, "__args__", ()))
                  if isinstance(c, type) and issubclass(c, BaseModel)]
        model = nested[0] if nested else None
    return True


# Fields of a view that a recipe's data section does not set, and why.
_SET_BY_RECIPE = {
    "split": "training reads the train split and validates on the val split",
    "clip": "the view's clip is the recipe's top-level 'clip'",
    "seed": "the view's seed is the recipe's 'optim.seed'",
}


class Recipe(_Strict):
    """A training recipe. ``data`` is the view it trains on (every split): the data section as
    written, with the recipe's ``clip`` and ``optim.seed``."""

    name: str
    procedure: str = "cholecystectomy"
    description: str = ""
    # clip and optim come before data: validating data reads them
    clip: ClipSpec = Field(
        default_factory=lambda: ClipSpec(frames=8, stride=1, fps=5, size=112)
    )
    optim: OptimSpec = Field(default_factory=OptimSpec)
    data: ViewSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    temporal: TemporalSpec | None = None
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    # the regression gate's thresholds as written: evaluation validates them
    # (surgflow.evaluation.thresholds.parse_gate), and training may not import evaluation
    gate: dict[str, Any] = Field(default_factory=dict)
    triggers: TriggerSpec = Field(default_factory=TriggerSpec)
    sweep: SweepSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"name {v!r} must be 1-64 lowercase letters, digits, '.', '-' or '_'"
            )
        return v

    @field_validator("data", mode="before")
    @classmethod
    def _data_section(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for key, why in _SET_BY_RECIPE.items():
                if key in v:
                    raise ValueError(f"'{key}' is not set in a recipe's data section: {why}")
        return v

    @field_validator("data")
    @classmethod
    def _view(cls, v: ViewSpec, info: ValidationInfo) -> ViewSpec:
        clip, optim = info.data.get("clip"), info.data.get("optim")
        if clip is None or optim is None:
            return v  # the recipe is invalid already, and its errors name clip or optim
        return v.model_copy(update={"clip": clip, "seed": optim.seed})

    @field_serializer("data", mode="wrap")
    def _data_as_written(self, v: ViewSpec, handler: Any) -> Any:
        # what the recipe sets elsewhere is stored there only, so a dumped recipe reloads
        out = handler(v)
        return {k: x for k, x in out.items() if k not in _SET_BY_RECIPE}

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        from surgflow.training.models import CLIP_ARCHITECTURES

        if self.model.reused:
            if self.temporal is None or self.temporal.reused:
                raise ValueError(
                    "'model: {from: production}' needs a temporal section to train: with every "
                    "stage taken from production there is nothing to train"
                )
            return self  # the clip must match production's; checked against its bundle
        info = CLIP_ARCHITECTURES[self.model.architecture]
        if info.fixed_frames and self.clip.frames != info.fixed_frames:
            raise ValueError(
                f"architecture {info.name!r} needs clip.frames = {info.fixed_frames}, "
                f"got {self.clip.frames}"
            )
        if info.fixed_size and self.clip.size != info.fixed_size:
            raise ValueError(
                f"architecture {info.name!r} needs clip.size = {info.fixed_size}, "
                f"got {self.clip.size}"
            )
        if self.clip.frames < info.min_frames or self.clip.size < info.min_size:
            raise ValueError(
                f"architecture {info.name!r} needs clip.frames ≥ {info.min_frames} and "
                f"clip.size ≥ {info.min_size}, got {self.clip.frames} and {self.clip.size}"
            )
        return self

    @property
    def is_chain(self) -> bool:
        return self.temporal is not None

    @property
    def reused_stages(self) -> list[str]:
        """The chain stages (``encoder``, ``temporal``) taken from the production chain."""
        out = ["encoder"] if self.model.reused else []
        return out + (["temporal"] if self.temporal is not None and self.temporal.reused else [])


def parse_recipe(data: Any, origin: str = "recipe") -> Recipe:
    """Validate a recipe given as plain data; ``origin`` names it in errors."""
    if not isinstance(data, dict):
        got = type(data).__name__
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {got}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        why = describe_validation(e, _field, allowed=_allowed_fields)
        raise ConfigError(f"{origin}: {why}") from e


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe {p}: file does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {p}: not valid YAML: {' '.join(str(e).split())}") from e
    recipe = parse_recipe(data, origin=f"recipe {p}")
    return _resolve_paths(recipe, p.parent)


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Relative paths in a recipe are relative to the recipe file."""
    updates: dict[str, Any] = {}
    if recipe.model.pretrained is not None and not recipe.model.pretrained.is_absolute():
        pre = (base / recipe.model.pretrained).resolve()
        updates["model"] = recipe.model.model_copy(update={"pretrained": pre})
    return recipe.model_copy(update=updates) if updates else recipe


def _field(loc: tuple[int | str, ...]) -> str:
    return f"field {(dotted(loc) or '(top level)')!r}"


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    hidden = _SET_BY_RECIPE if model is ViewSpec else {}
    return sorted(f for f in model.model_fields if f not in hidden)
