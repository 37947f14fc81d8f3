"""Procedures and label taxonomies."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgflow.data.taxonomy import CHOLEC80_PHASES, ProcedureCatalog
from surgflow.errors import BadInput, ConflictError, UnknownName


def test_cholecystectomy_is_built_in(tmp_path: Path) -> None:
    cat = ProcedureCatalog(tmp_path)
    assert cat.get("cholecystectomy").labels == CHOLEC80_PHASES
    assert len(CHOLEC80_PHASES) == 7
    assert cat.get("cholecystectomy").index("ClippingCutting") == 2


def test_add_list_and_extend(tmp_path: Path) -> None:
    cat = ProcedureCatalog(tmp_path)
    proc, changed = cat.add("appendectomy", ["Access", "Dissection", "Closure"])
    assert changed and proc.labels == ("Access", "Dissection", "Closure")
    assert cat.add("appendectomy", ["Access", "Dissection", "Closure"])[1] is False
    extended, changed = cat.add("appendectomy", ["Access", "Dissection", "Closure", "Irrigation"])
    assert changed and extended.labels[-1] == "Irrigation"
    assert [p.name for p in cat.list()] == ["appendectomy", "cholecystectomy", "privacy"]


@pytest.mark.parametrize(
    "labels", [["A", "B"], ["Dissection", "Access", "Closure"], ["Access", "Closure"]]
)
def test_redefinition_that_breaks_existing_labels_is_refused(tmp_path: Path, labels) -> None:
    cat = ProcedureCatalog(tmp_path)
    cat.add("appendectomy", ["Access", "Dissection", "Closure"])
    with pytest.raises(ConflictError, match="may only append"):
        cat.add("appendectomy", labels)
    assert cat.get("appendectomy").labels == ("Access", "Dissection", "Closure")


@pytest.mark.parametrize(
    ("name", "labels", "match"),
    [
        ("x", ["A", "A"], "appears twice"),
        ("x", [], "at least one label"),
        ("x", [" "], "non-empty"),
        ("Bad Name", ["A"], "lowercase"),
    ],
)
def test_invalid_definitions(tmp_path: Path, name, labels, match) -> None:
    with pytest.raises(BadInput, match=match):
        ProcedureCatalog(tmp_path).add(name, labels)


def test_builtin_cannot_be_redefined_and_unknown_names_list_known(tmp_path: Path) -> None:
    cat = ProcedureCatalog(tmp_path)
    with pytest.raises(ConflictError, match="built in"):
        cat.add("cholecystectomy", ["A"])
    with pytest.raises(UnknownName, match="known: cholecystectomy"):
        cat.get("nephrectomy")
    with pytest.raises(UnknownName, match="CalotTriangleDissection"):
        cat.get("cholecystectomy").index("Calot")
