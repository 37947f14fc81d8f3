"""Recipes: the examples load; bad recipes fail naming the field, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from surgflow.data.versions import parse_ref
from surgflow.data.views import ViewSpec
from surgflow.errors import BadInput, ConfigError
from surgflow.training.data import view_spec
from surgflow.training.recipe import load_recipe, parse_recipe
from tests.cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"name": "r", "data": {"sources": ["cholecystectomy"]}}


def bad(**changes) -> str:
    data = {**MINIMAL, **changes}
    with pytest.raises(ConfigError) as e:
        parse_recipe(data, origin="recipe test.yaml")
    return str(e.value)


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipes_load(path):
    recipe = load_recipe(path)
    assert recipe.name and recipe.data.sources


def test_defaults_and_chain_flag():
    r = parse_recipe(MINIMAL)
    assert not r.is_chain and r.model.architecture == "tiny2d" and r.resources.world_size == 1
    assert parse_recipe({**MINIMAL, "temporal": {}}).is_chain


def test_unknown_architecture_lists_the_known_ones():
    msg = bad(model={"architecture": "resnet9000"})
    assert "recipe test.yaml" in msg and "'model.architecture'" in msg and "'resnet9000'" in msg
    assert "r3d_18" in msg and "resnet50" in msg and "tiny2d" in msg


def test_bad_number_names_field_value_and_bound():
    msg = bad(optim={"lr": -1})
    assert "'optim.lr'" in msg and "-1" in msg and "greater than 0" in msg


def test_bad_choice_names_the_allowed_values():
    msg = bad(optim={"optimizer": "lion"})
    assert "'optim.optimizer'" in msg and "'lion'" in msg and "'sgd'" in msg and "'adamw'" in msg


def test_unknown_field_lists_the_allowed_fields():
    msg = bad(optim={"epochz": 3})
    assert "'optim.epochz' is not allowed" in msg and "epochs" in msg and "batch_size" in msg
    assert "'clip.frame' is not allowed" in bad(clip={"frame": 3})


def test_missing_and_malformed_sources():
    with pytest.raises(ConfigError) as e:
        parse_recipe({"name": "r"}, origin="recipe test.yaml")
    assert str(e.value) == "recipe test.yaml: field 'data' is required"
    with pytest.raises(BadInput) as grammar:  # the one grammar of dataset references
        parse_ref("Cholec@latest")
    assert bad(data={"sources": ["Cholec@latest"]}) == (
        f"recipe test.yaml: field 'data.sources': {grammar.value} (got ['Cholec@latest'])")


def test_the_data_section_is_the_view_on_the_recipes_clip_and_seed():
    r = parse_recipe({**MINIMAL, "clip": {"frames": 4, "size": 64}, "optim": {"seed": 5}})
    assert type(r.data) is ViewSpec
    assert r.data == ViewSpec(sources=["cholecystectomy"], clip=r.clip, seed=5)
    assert (r.data.min_confidence, r.data.balance, r.data.split) == (0.8, "inverse_frequency",
                                                                      None)
    train, val = (view_spec(r, ["cholecystectomy@2"], s) for s in ("train", "val"))
    assert train == r.data.model_copy(update={"sources": ["cholecystectomy@2"], "split": "train"})
    assert (val.split, val.balance, val.balance_params) == ("val", "none", {})
    dumped = r.model_dump(mode="json")
    assert dumped["data"] == {"sources": ["cholecystectomy"], "filter": None,
                              "min_confidence": 0.8, "balance": "inverse_frequency",
                              "balance_by": "label", "balance_params": {},
                              "out_of_body": "exclude"}
    assert parse_recipe(dumped) == r


def test_the_data_section_refuses_what_the_recipe_sets_elsewhere():
    sources = ["cholecystectomy"]
    assert bad(data={"sources": sources, "clip": {"frames": 4}}) == (
        "recipe test.yaml: field 'data': 'clip' is not set in a recipe's data section: the "
        "view's clip is the recipe's top-level 'clip' (got a mapping)")
    assert bad(data={"sources": sources, "sourcez": ["x"]}) == (
        "recipe test.yaml: field 'data.sourcez' is not allowed here; allowed: balance, "
        "balance_by, balance_params, filter, min_confidence, out_of_body, sources")


def test_unknown_balancing_strategy_lists_known_ones():
    msg = bad(data={"sources": ["cholecystectomy"], "balance": "magic"})
    assert "'magic'" in msg and "inverse_frequency" in msg and "effective_number" in msg


def test_architecture_with_fixed_input_checks_the_clip():
    msg = bad(model={"architecture": "mvit_v2_s"}, clip={"frames": 8, "size": 224})
    assert "mvit_v2_s" in msg and "clip.frames = 16" in msg and "got 8" in msg


def test_yaml_errors_and_missing_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load_recipe(broken)
    with pytest.raises(ConfigError, match=r"nope.yaml: file does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_recipe(listing)


def test_relative_pretrained_path_is_relative_to_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "model": {"architecture": "resnet18",
                                                          "pretrained": "w/resnet18.pt"}}))
    assert load_recipe(path).model.pretrained == tmp_path / "sub" / "w" / "resnet18.pt"


def test_cli_rejects_a_bad_recipe_with_exit_2_and_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "optim": {"epochs": 0}}))
    out = run_cli("train", str(path), json=True, check=False, cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert out.stderr.splitlines() == [f"error: recipe {path}: field 'optim.epochs': Input "
                                       "should be greater than or equal to 1 (got 0)"]


def test_a_stage_from_production_names_nothing_else_and_survives_a_round_trip():
    r = parse_recipe({**MINIMAL, "temporal": {"from": "production"}})
    assert r.reused_stages == ["temporal"] and r.is_chain
    again = parse_recipe(r.model_dump(mode="json"))  # run records store the dumped recipe
    assert again.reused_stages == ["temporal"] and r.model_dump(mode="json")["temporal"][
        "from"] == "production"
    assert parse_recipe({**MINIMAL, "model": {"from": "production"},
                         "temporal": {}}).reused_stages == ["encoder"]
    msg = bad(temporal={"from": "production", "layers": 3})
    assert "'temporal'" in msg and "'layers'" in msg and "drop" in msg
    assert "'model.from'" in bad(model={"from": "staging"})
    assert "nothing to train" in bad(model={"from": "production"})
    assert "nothing to train" in bad(model={"from": "production"}, temporal={"from": "production"})
