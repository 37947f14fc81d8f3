"""The regression gate's thresholds: a recipe's ``gate:`` block, as :class:`GateSpec`.

A leaf: pydantic and :mod:`surgflow.errors` only (metric names are checked against
:data:`surgflow.evaluation.metrics.METRICS` when a block is validated). A recipe keeps its gate
block as written, a plain mapping, because training sits below evaluation and may not import
it; :func:`parse_gate` is the one validation of a block, called where a recipe is loaded to be
trained (``surgflow train``, the training and pipeline flows), so that a bad block fails before
anything trains, and by the gate itself (:func:`surgflow.evaluation.gate.gate_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from surgflow.errors import ConfigError, describe_validation, dotted


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateBootstrapSpec(_Strict):
    """The gate's paired bootstrap over field videos of ``metric`` (candidate − production)."""

    metric: str = "macro_f1"
    resamples: int = Field(default=1000, ge=100, le=100_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = Field(default=0, ge=0)
    margin: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="the CI's lower bound must be ≥ −margin; default: the metric's max_drop",
    )

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return _known_metric(v)


class PrivacyGateSpec(_Strict):
    """The privacy checks of an out-of-body detector, measured after redaction's margin
    (:mod:`surgflow.evaluation.privacy`)."""

    label: str = Field(default="OutOfBody", description="the class that is out of the body")
    min_recall: float = Field(
        default=0.999, ge=0.0, le=1.0,
        description="share of out-of-body frames that must end up blacked out")
    max_lost: float = Field(
        default=0.02, ge=0.0, le=1.0,
        description="share of in-body frames the detector may call out of the body (the "
                    "margin blacks out more, the same for every detector, and is reported)")
    margin_s: float = Field(default=1.0, ge=0.0, le=10.0,
                            description="seconds blacked out around each detected range")
    tolerance_s: float = Field(
        default=1.0, ge=0.0, le=10.0,
        description="in-body frames called out of the body this close to a true range are "
                    "the chain's once-a-second sampling, not lost to its errors")


class GateSpec(_Strict):
    """What the regression gate checks on the field suite for a recipe's candidates.

    Metric names are those of :data:`surgflow.evaluation.metrics.METRICS` (``accuracy``,
    ``macro_f1``, ``macro_precision``, ``macro_recall``, ``macro_jaccard`` and their
    ``relaxed_`` forms). ``min_accuracy`` / ``min_macro_f1`` are the older spelling of
    ``min: {accuracy: …, macro_f1: …}``; ``max_regression`` is the absolute drop allowed for
    accuracy and macro F1 when ``max_drop`` is not given.
    """

    min: dict[str, float] = Field(default_factory=dict, description="absolute minimums")
    min_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    min_macro_f1: float | None = Field(default=None, ge=0.0, le=1.0)
    max_drop: dict[str, float] | None = Field(
        default=None, description="largest allowed absolute drop against production, per metric"
    )
    max_regression: float = Field(
        default=0.02, ge=0.0, le=1.0, description="largest allowed drop against production"
    )
    max_relative_drop: dict[str, float] = Field(
        default_factory=dict, description="largest allowed drop as a fraction of production's"
    )
    source_max_drop: dict[str, float] = Field(
        default_factory=lambda: {"macro_f1": 0.05},
        description="per-source non-inferiority: no source may drop by more than this",
    )
    bootstrap: GateBootstrapSpec | None = Field(default_factory=GateBootstrapSpec)
    chain_vs_encoder: bool = Field(
        default=True, description="the chain must score at least its own encoder alone"
    )
    chain_vs_encoder_metrics: list[str] = Field(default_factory=lambda: ["macro_f1"])
    privacy: PrivacyGateSpec | None = Field(
        default=None, description="out-of-body detectors: recall and in-body loss after "
                                  "redaction's margin")

    @field_validator("min", "max_drop", "max_relative_drop", "source_max_drop")
    @classmethod
    def _per_metric(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for name, value in (v or {}).items():
            _known_metric(name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: {value} must be between 0 and 1")
        return v

    @field_validator("chain_vs_encoder_metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        return [_known_metric(name) for name in v]

    @model_validator(mode="after")
    def _one_minimum_each(self) -> GateSpec:
        for name, old in (("accuracy", self.min_accuracy), ("macro_f1", self.min_macro_f1)):
            if old is not None and self.min.get(name, old) != old:
                raise ValueError(f"min_{name} = {old} contradicts min.{name} = "
                                 f"{self.min[name]}; give one of them")
        return self

    def minimums(self) -> dict[str, float]:
        """Absolute minimum per metric (``min`` merged with the older fields)."""
        old = {"accuracy": self.min_accuracy, "macro_f1": self.min_macro_f1}
        return {k: v for k, v in old.items() if v is not None} | dict(self.min)

    def drops(self) -> dict[str, float]:
        """Largest allowed absolute drop against production, per metric."""
        if self.max_drop is not None:
            return dict(self.max_drop)
        return {"accuracy": self.max_regression, "macro_f1": self.max_regression}


def parse_gate(block: Mapping[str, Any] | None, origin: str) -> GateSpec:
    """A recipe's gate block (its defaults when the recipe has none); ConfigError naming
    ``origin`` and each bad field as it is written in the recipe (``gate.min.f2``)."""
    if block is not None and not isinstance(block, Mapping):
        raise ConfigError(f"{origin}: field 'gate': expected a mapping, got "
                          f"{type(block).__name__}")
    try:
        return GateSpec.model_validate(dict(block or {}))
    except ValidationError as e:
        why = describe_validation(e, _field, allowed=_allowed_fields)
        raise ConfigError(f"{origin}: {why}") from e


def _field(loc: tuple[int | str, ...]) -> str:
    return f"field {dotted(('gate', *loc))!r}"


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    nested = {("bootstrap",): GateBootstrapSpec, ("privacy",): PrivacyGateSpec}
    model = nested.get(tuple(loc)) or (GateSpec if not loc else None)
    return sorted(model.model_fields) if model else []


def _known_metric(name: str) -> str:
    # The metric names have one home, the (numpy-only) metrics module; imported when a gate
    # block is validated so that this module stays a leaf.
    from surgflow.evaluation.metrics import check_metric

    return check_metric(name, "gate")
