"""Balancing strategies: per-sample weights that even out a skewed distribution.

A strategy maps the count ``n_c`` of samples of each group ``c`` (a label, a source or a video)
to a weight per sample of that group, and names the distribution it aims at. Strategies are
picked by name from :data:`STRATEGIES`; an unknown name is rejected with the known ones.

- ``none``: ``w_c = 1``; target: the natural distribution.
- ``inverse_frequency``: ``w_c = N / (K n_c)`` (N samples, K groups); target: uniform.
- ``cap_per_class``: ``w_c = min(1, cap / n_c)``, each group counts at most ``cap`` samples
  (default cap: the median group size); target: ``min(n_c, cap)`` normalised.
- ``effective_number``: Cui et al. 2019, ``w_c = (1 - beta) / (1 - beta^n_c)``, scaled so the K
  class weights sum to K; target: uniform, which it approaches as ``beta`` tends to 1.

Per-sample weights are scaled to mean 1 so that they can be used directly in a loss or sampler.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from surgflow.errors import BadInput, UnknownName

ClassWeights = Callable[..., tuple[dict, dict]]


def _none(counts: dict[Hashable, int]) -> tuple[dict, dict]:
    total = sum(counts.values())
    return {c: 1.0 for c in counts}, {c: n / total for c, n in counts.items()}


def _inverse_frequency(counts: dict[Hashable, int]) -> tuple[dict, dict]:
    total, k = sum(counts.values()), len(counts)
    return {c: total / (k * n) for c, n in counts.items()}, {c: 1.0 / k for c in counts}


def _cap_per_class(counts: dict[Hashable, int], cap: float | None = None) -> tuple[dict, dict]:
    if cap is None:
        cap = float(np.median(list(counts.values())))
    if not cap > 0:
        raise BadInput(f"balancing cap_per_class: cap must be positive, got {cap}")
    capped = {c: min(n, cap) for c, n in counts.items()}
    total = sum(capped.values())
    return {c: capped[c] / n for c, n in counts.items()}, {c: v / total for c, v in capped.items()}


def _effective_number(counts: dict[Hashable, int], beta: float = 0.999) -> tuple[dict, dict]:
    if not 0 <= beta < 1:
        raise BadInput(f"balancing effective_number: beta must be in [0, 1), got {beta}")
    raw = {c: (1 - beta) / (1 - beta**n) for c, n in counts.items()}
    scale = len(raw) / sum(raw.values())
    return {c: w * scale for c, w in raw.items()}, {c: 1.0 / len(counts) for c in counts}


STRATEGIES: dict[str, ClassWeights] = {
    "none": _none,
    "inverse_frequency": _inverse_frequency,
    "cap_per_class": _cap_per_class,
    "effective_number": _effective_number,
}

_PARAMS = {"none": set(), "inverse_frequency": set(), "cap_per_class": {"cap"},
           "effective_number": {"beta"}}


def get_strategy(name: str) -> ClassWeights:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownName("balancing strategy", name, list(STRATEGIES)) from None


def check_params(name: str, params: dict) -> None:
    """Reject parameters the strategy does not take, naming the ones it does."""
    get_strategy(name)
    unknown = set(params) - _PARAMS[name]
    if unknown:
        takes = ", ".join(sorted(_PARAMS[name])) or "no parameters"
        raise BadInput(
            f"balancing strategy {name!r} does not take {', '.join(sorted(unknown))} "
            f"(it takes {takes})"
        )


def class_weights(name: str, counts: dict[Hashable, int], **params) -> tuple[dict, dict]:
    """``(weight per sample of each group, target share of each group)`` for a strategy."""
    check_params(name, params)
    if not counts or any(n <= 0 for n in counts.values()):
        raise BadInput(f"balancing needs positive group counts, got {dict(counts)}")
    return get_strategy(name)(dict(counts), **params)


@dataclass(frozen=True)
class Balance:
    """Per-sample weights and how the groups come out under them."""

    weights: np.ndarray
    counts: dict
    target: dict
    achieved: dict

    def table(self) -> dict:
        """``{group: {"samples", "natural", "target", "achieved"}}`` shares, for reports."""
        total = sum(self.counts.values())
        return {
            str(c): {"samples": n, "natural": n / total, "target": self.target[c],
                     "achieved": self.achieved[c]}
            for c, n in sorted(self.counts.items(), key=lambda kv: str(kv[0]))
        }


def balance(keys: Sequence[Hashable], name: str = "none", **params) -> Balance:
    """Weights for samples whose groups are ``keys`` under strategy ``name``, mean 1."""
    if len(keys) == 0:
        return Balance(np.zeros(0), {}, {}, {})
    counts = Counter(keys)
    per_sample, target = class_weights(name, counts, **params)
    w = np.fromiter((per_sample[k] for k in keys), dtype=np.float64, count=len(keys))
    w *= len(w) / w.sum()
    return Balance(w, dict(counts), target, shares(keys, w))


def shares(keys: Sequence[Hashable], weights: np.ndarray) -> dict:
    """Expected share of each group when samples are drawn in proportion to ``weights``."""
    total = float(np.sum(weights))
    out: dict = {}
    for k, w in zip(keys, weights, strict=True):
        out[k] = out.get(k, 0.0) + float(w)
    return {k: v / total for k, v in out.items()}
