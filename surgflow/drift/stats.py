"""Drift statistics over binned per-video distributions, and the features they are taken of.

A :class:`Feature` has a name, a kind and, when continuous, fixed bin edges, so that any two
distributions of it share their bins, whoever computed them and whenever. A
:class:`Distribution` is one feature over some videos: the weight in each bin (or category),
each video weighing 1 whatever its length (its own values are normalised first, so one long
video cannot outweigh a window of short ones), and, for a continuous feature, a sketch of each
video's values (:data:`SKETCH` quantiles) for the Kolmogorov–Smirnov distance.

- :func:`psi`: the population stability index ``Σ (a - e)·ln(a / e)`` over bin shares, a share
  of 0 floored at :data:`EPSILON` so that a bin only one side fills counts, finitely;
- :func:`ks_statistic` and :func:`ks_pvalue`: the two-sample KS distance and its asymptotic
  p-value;
- :func:`chi_square`: observed category counts against the reference's shares.

p-values take the videos as the sample size on each side: the seconds (or frames) of one
video are far from independent draws, the videos nearly are. A feature names the test that is
meaningful for it (``Feature.test``); the phase mix has none, its per-video shares being no
counts.

Why a few lines of numpy rather than Evidently 0.7: Evidently is on PyPI but not a dependency
of surgflow, and it computes these same statistics inside a report framework built on pandas
data frames of rows; the watch needs four formulas on fixed bins, which stay readable, testable
against hand-computed values, and cost nothing to import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from surgflow.errors import UnknownName

#: the share an empty bin is floored at in PSI and in the chi-square's expected counts
EPSILON = 1e-4
#: quantiles of each video's values kept for the KS distance
SKETCH = 32

Kind = Literal["continuous", "categorical"]
Test = Literal["ks", "chi2"]


@dataclass(frozen=True)
class Feature:
    """One watched feature: continuous ones are binned on fixed ``edges`` (a value below the
    first inner edge falls in the first bin, one above the last in the last bin)."""

    name: str
    kind: Kind
    description: str
    edges: tuple[float, ...] = ()
    test: Test | None = None

    def bins(self) -> list[str]:
        """The bin labels of a continuous feature, in order (``"0.9-1"``)."""
        return [f"{lo:g}-{hi:g}" for lo, hi in zip(self.edges[:-1], self.edges[1:],
                                                   strict=True)]

    def histogram(self, values: Sequence[float]) -> np.ndarray:
        """Counts of ``values`` per bin."""
        inner = np.asarray(self.edges[1:-1], dtype=np.float64)
        idx = np.searchsorted(inner, np.asarray(values, dtype=np.float64), side="right")
        return np.bincount(idx, minlength=len(self.edges) - 1).astype(np.float64)


def _log_edges(top: int) -> tuple[float, ...]:
    return (0.0, *(float(2 ** k) for k in range(top + 1)))


FEATURES: dict[str, Feature] = {f.name: f for f in (
    Feature("confidence", "continuous", "confidence of the predicted phase, each second",
            tuple(round(x, 1) for x in np.linspace(0.0, 1.0, 11)), "ks"),
    Feature("phase_mix", "categorical", "share of seconds predicted as each phase"),
    Feature("phase_duration", "continuous",
            "seconds of each run of one predicted phase (log2 bins)", _log_edges(12), "ks"),
    Feature("resolution", "categorical", "frame size, WxH", test="chi2"),
    Feature("fps", "categorical", "frame rate", test="chi2"),
    Feature("brightness", "continuous", "mean luma (0-255) of frames sampled evenly",
            tuple(float(x) for x in range(0, 257, 32)), "ks"),
)}


def feature(name: str) -> Feature:
    """The registered feature ``name``; UnknownName listing the known ones."""
    try:
        return FEATURES[name]
    except KeyError:
        raise UnknownName("drift feature", name, list(FEATURES)) from None


@dataclass(frozen=True)
class Distribution:
    """One feature over ``videos`` videos: weight per bin or category (each video's weights
    sum to 1) and, if continuous, the pooled :data:`SKETCH` quantiles of each video."""

    counts: dict[str, float]
    sketch: tuple[float, ...] = ()
    videos: int = 1

    @classmethod
    def of_video(cls, f: Feature, values: Sequence[Any]) -> Distribution | None:
        """One video's distribution of ``values`` (None: it has none)."""
        if len(values) == 0:
            return None
        if f.kind == "categorical":
            labels, n = np.unique(np.asarray([str(v) for v in values]), return_counts=True)
            return cls({str(k): float(c) / len(values) for k, c in zip(labels, n, strict=True)})
        x = np.asarray(values, dtype=np.float64)
        shares = f.histogram(x) / len(x)
        sketch = np.quantile(x, (np.arange(SKETCH) + 0.5) / SKETCH)
        return cls({b: float(s) for b, s in zip(f.bins(), shares, strict=True) if s > 0},
                   tuple(round(float(v), 4) for v in sketch))

    def as_json(self) -> dict[str, Any]:
        return {"counts": {k: round(v, 6) for k, v in sorted(self.counts.items())},
                "sketch": list(self.sketch), "videos": self.videos}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Distribution:
        return cls({str(k): float(v) for k, v in data["counts"].items()},
                   tuple(float(v) for v in data.get("sketch", ())), int(data["videos"]))


def merge(dists: Iterable[Distribution | None]) -> Distribution | None:
    """The distribution of all their videos together (None: there is none)."""
    have = [d for d in dists if d is not None]
    if not have:
        return None
    counts: dict[str, float] = {}
    for d in have:
        for k, v in d.counts.items():
            counts[k] = counts.get(k, 0.0) + v
    return Distribution(counts, tuple(v for d in have for v in d.sketch),
                        sum(d.videos for d in have))


def shares(counts: Sequence[float]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if not total > 0:
        raise ValueError(f"a distribution needs a positive total weight, got {c.tolist()}")
    return c / total


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = EPSILON) -> float:
    """Population stability index of ``actual`` against ``expected`` (weights per bin, the
    same bins in the same order); each share floored at ``eps``."""
    if len(expected) != len(actual):
        raise ValueError(f"PSI compares the same bins: {len(expected)} expected weights, "
                         f"{len(actual)} actual")
    e = np.maximum(shares(expected), eps)
    a = np.maximum(shares(actual), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sample Kolmogorov–Smirnov distance: the largest gap between the empirical
    CDFs of ``a`` and ``b``."""
    x, y = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"KS needs two non-empty samples, got {len(x)} and {len(y)} values")
    grid = np.concatenate([x, y])
    fx = np.searchsorted(x, grid, side="right") / len(x)
    fy = np.searchsorted(y, grid, side="right") / len(y)
    return float(np.max(np.abs(fx - fy)))


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of KS distance ``d`` between samples of ``n`` and ``m``: the
    Kolmogorov distribution's tail ``2 Σ (-1)^(k-1) exp(-2 k² λ²)`` at ``λ = d·√(nm/(n+m))``."""
    lam = d * math.sqrt(n * m / (n + m))
    if lam < 0.2:  # the series converges slowly there, and the tail is 1 to 7 digits
        return 1.0
    k = np.arange(1, 101)
    p = 2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k ** 2 * lam ** 2))
    return float(min(1.0, max(0.0, p)))


def chi_square(expected: Sequence[float], observed: Sequence[float],
               eps: float = EPSILON) -> tuple[float, float]:
    """(statistic, p) of ``observed`` counts against ``expected`` weights (shares floored at
    ``eps``) over the same categories; p is 1 with a single category."""
    obs = np.asarray(observed, dtype=np.float64)
    if len(obs) != len(expected):
        raise ValueError(f"chi-square compares the same categories: {len(expected)} expected, "
                         f"{len(obs)} observed")
    exp = np.maximum(shares(expected), eps) * obs.sum()
    stat = float(np.sum((obs - exp) ** 2 / exp))
    if len(obs) < 2:
        return stat, 1.0
    # scipy (installed with mlflow) for the chi-square tail: it is the regularised upper
    # incomplete gamma function, which numpy does not have
    from scipy.stats import chi2

    return stat, float(chi2.sf(stat, len(obs) - 1))


@dataclass(frozen=True)
class FeatureDrift:
    """One feature of a window against its reference: PSI and, where meaningful, the
    feature's test (``ks`` or ``chi2``) with its statistic and p-value."""

    psi: float
    test: Test | None = None
    statistic: float | None = None
    p: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"psi": round(self.psi, 4), "test": self.test,
                "statistic": None if self.statistic is None else round(self.statistic, 4),
                "p": None if self.p is None else float(f"{self.p:.4g}")}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureDrift:
        return cls(float(data["psi"]), data.get("test"), data.get("statistic"), data.get("p"))


def compare(f: Feature, reference: Distribution, observed: Distribution) -> FeatureDrift:
    """``observed`` against ``reference`` on feature ``f``."""
    keys = f.bins() if f.kind == "continuous" else sorted(reference.counts | observed.counts)
    e = [reference.counts.get(k, 0.0) for k in keys]
    a = [observed.counts.get(k, 0.0) for k in keys]
    out = FeatureDrift(psi(e, a))
    if f.test == "ks" and reference.sketch and observed.sketch:
        d = ks_statistic(reference.sketch, observed.sketch)
        return FeatureDrift(out.psi, "ks", d, ks_pvalue(d, reference.videos, observed.videos))
    if f.test == "chi2":
        stat, p = chi_square(e, a)
        return FeatureDrift(out.psi, "chi2", stat, p)
    return out


@dataclass(frozen=True)
class Summary:
    """Every feature's distribution over a set of videos (a feature no video had is absent)."""

    features: dict[str, Distribution] = field(default_factory=dict)

    @classmethod
    def of(cls, per_video: Iterable[Mapping[str, Distribution]]) -> Summary:
        rows = list(per_video)
        merged = {name: merge(r.get(name) for r in rows) for name in FEATURES}
        return cls({k: v for k, v in merged.items() if v is not None})

    def compare(self, reference: Summary) -> dict[str, FeatureDrift]:
        """Each feature both summaries hold, against ``reference``."""
        return {name: compare(FEATURES[name], reference.features[name], d)
                for name, d in self.features.items() if name in reference.features}

    def as_json(self) -> dict[str, Any]:
        return {name: d.as_json() for name, d in self.features.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Summary:
        return cls({name: Distribution.from_json(d) for name, d in data.items()
                    if name in FEATURES})
