"""Recipes: validation, extends, --set overrides, errors that name every problem; every shipped recipe loads."""

import json
from pathlib import Path

import pytest
from conftest import ROOT, write_recipe
from pydantic import ValidationError

from glmtune.errors import UsageError
from glmtune.recipe_files import load_recipe

MINIMAL = '[model]\npath = "builtin:tiny-glm4"\n[data]\ntrain = ["d.jsonl"]\n'


def test_defaults_and_relative_paths(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, MINIMAL))
    assert recipe.method.kind == "lora" and recipe.lora.targets == "auto"
    assert recipe.data.train == [str(tmp_path / "d.jsonl")]  # relative to the recipe file, not the cwd
    assert recipe.model.path == "builtin:tiny-glm4"


def test_recipe_is_immutable(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, MINIMAL))
    with pytest.raises(ValidationError):
        recipe.train.epochs = 1


def test_extends_merges_and_resolves_against_each_file(tmp_path):
    (tmp_path / "base").mkdir()
    write_recipe(tmp_path / "base", MINIMAL + "[train]\nepochs = 5\nlearning_rate = 1e-3\n", "base.toml")
    child = write_recipe(tmp_path, 'extends = "base/base.toml"\n[train]\nepochs = 2\n')
    recipe = load_recipe(child)
    assert recipe.train.epochs == 2 and recipe.train.learning_rate == 1e-3
    assert recipe.data.train == [str(tmp_path / "base" / "d.jsonl")]


def test_extends_cycle_is_reported(tmp_path):
    write_recipe(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write_recipe(tmp_path, 'extends = "a.toml"\n', "b.toml")
    with pytest.raises(UsageError, match="loops back"):
        load_recipe(tmp_path / "a.toml")


def test_set_overrides_are_typed_and_validated(tmp_path):
    path = write_recipe(tmp_path, MINIMAL)
    recipe = load_recipe(
        path, ["train.epochs=7", "lora.targets=['q_proj']", "data.variables.name=Ann", "run.name=x"]
    )
    assert (
        recipe.train.epochs == 7
        and recipe.lora.targets == ["q_proj"]
        and recipe.data.variables == {"name": "Ann"}
    )
    with pytest.raises(UsageError, match=r"train\.epochs"):
        load_recipe(path, ["train.epochs=lots"])
    with pytest.raises(UsageError, match="KEY=VALUE"):
        load_recipe(path, ["train.epochs"])


def test_all_problems_reported_at_once_with_suggestions(tmp_path):
    path = write_recipe(
        tmp_path, '[model]\npth = "x"\n[train]\nlearning_rat = 1\nepochs = "many"\n[bogus]\nx = 1\n'
    )
    with pytest.raises(UsageError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert str(path) in message
    assert "model.pth: unknown key (did you mean 'model.path'?)" in message
    assert "model.path: missing required key" in message
    assert "train.learning_rat: unknown key (did you mean 'train.learning_rate'?)" in message
    assert "train.epochs:" in message
    assert "bogus: unknown key" in message
    assert "\n" not in message


def test_impossible_combination_is_refused(tmp_path):
    path = write_recipe(tmp_path, MINIMAL + '[method]\nkind = "full"\n[launch]\nquantize = "8bit"\n')
    with pytest.raises(UsageError, match="quantize needs method.kind = 'lora'"):
        load_recipe(path)


def test_toml_syntax_error_names_line(tmp_path):
    path = write_recipe(tmp_path, '[model]\npath = "x\n')
    with pytest.raises(UsageError, match=r"invalid TOML: .*line 2"):
        load_recipe(path)


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")


@pytest.mark.parametrize("recipe_file", sorted((ROOT / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_load_and_open_with_their_command(recipe_file: Path):
    recipe = load_recipe(recipe_file)
    first_lines = recipe_file.read_text(encoding="utf-8").splitlines()[:4]
    assert first_lines[0].startswith("# "), "a recipe opens with what it does"
    assert any("glmtune " in line for line in first_lines), "and the exact command"
    registry = json.loads(Path(recipe.data.registry).read_text()) if recipe.data.registry else {}
    for file in recipe.data.train + recipe.data.eval + recipe.eval.data + recipe.eval.retention:
        assert Path(file).exists() or file in registry, file
