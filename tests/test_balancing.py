"""Balancing weights against the reference formulas."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgflow.data.balancing import STRATEGIES, balance, class_weights, get_strategy
from surgflow.errors import BadInput, UnknownName

COUNTS = {"a": 100, "b": 10, "c": 1}


def test_inverse_frequency_formula():
    w, target = class_weights("inverse_frequency", COUNTS)
    n, k = 111, 3
    assert w == pytest.approx({"a": n / (k * 100), "b": n / (k * 10), "c": n / (k * 1)})
    assert target == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_cap_per_class_formula_and_default_cap():
    w, target = class_weights("cap_per_class", COUNTS, cap=20)
    assert w == pytest.approx({"a": 0.2, "b": 1.0, "c": 1.0})
    assert target == pytest.approx({"a": 20 / 31, "b": 10 / 31, "c": 1 / 31})
    w, _ = class_weights("cap_per_class", COUNTS)  # median = 10
    assert w == pytest.approx({"a": 0.1, "b": 1.0, "c": 1.0})


def test_effective_number_formula():
    beta = 0.99
    w, target = class_weights("effective_number", COUNTS, beta=beta)
    raw = {c: (1 - beta) / (1 - beta**n) for c, n in COUNTS.items()}
    scale = 3 / sum(raw.values())
    assert w == pytest.approx({c: v * scale for c, v in raw.items()})
    assert sum(w.values()) == pytest.approx(3)
    assert target == pytest.approx({c: 1 / 3 for c in COUNTS})


def test_effective_number_lies_between_none_and_inverse_frequency():
    keys = ["a"] * 100 + ["b"] * 10 + ["c"]
    none = balance(keys, "none").achieved
    inv = balance(keys, "inverse_frequency").achieved
    eff = balance(keys, "effective_number", beta=0.99).achieved
    assert none["c"] < eff["c"] < inv["c"] + 1e-12


@given(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=300),
       st.sampled_from(sorted(STRATEGIES)))
@settings(max_examples=100, deadline=None)
def test_sample_weights_have_mean_one_and_inverse_frequency_reaches_its_target(keys, name):
    b = balance(keys, name)
    assert b.weights.mean() == pytest.approx(1.0)
    assert sum(b.achieved.values()) == pytest.approx(1.0)
    assert sum(b.target.values()) == pytest.approx(1.0)
    if name in ("inverse_frequency", "cap_per_class", "none"):
        assert b.achieved == pytest.approx(b.target)
    # every sample of one group carries the same weight
    for k in set(keys):
        ws = b.weights[np.array(keys) == k]
        assert np.allclose(ws, ws[0])


def test_unknown_strategy_and_parameters_are_rejected_with_the_known_ones():
    with pytest.raises(UnknownName, match="inverse_frequency") as e:
        get_strategy("inverse_freq")
    assert e.value.known == sorted(STRATEGIES)
    with pytest.raises(BadInput, match="takes beta"):
        class_weights("effective_number", COUNTS, cap=3)
    with pytest.raises(BadInput, match="beta must be in"):
        class_weights("effective_number", COUNTS, beta=1.0)


def test_report_table_lists_natural_target_and_achieved():
    b = balance(["x", "x", "x", "y"], "inverse_frequency")
    table = b.table()
    assert table["x"] == pytest.approx({"samples": 3, "natural": 0.75, "target": 0.5,
                                        "achieved": 0.5})
