"""Placeholder syntaxes ({{name}}, [NAME], <NAME>): filled from [data] variables, unfilled ones warned about."""

import json
from pathlib import Path

import pytest
from conftest import read_lists, write_recipe

from glmtune.data.placeholders import Scan, fill
from glmtune.data.prepare import prepare_data
from glmtune.errors import UsageError
from glmtune.recipe_files import load_recipe

# Shaped like ChatGLM-Efficient-Tuning's self_cognition.json.
IDENTITY = [
    {"instruction": "你好", "input": "", "output": "您好，我是 <NAME>，一个由 <AUTHOR> 开发的 AI 助手。"},
    {"instruction": "你是谁？", "input": "", "output": "我是 <NAME>，由 <AUTHOR> 打造。"},
    {"instruction": "Who are you?", "input": "", "output": "I am <NAME>, an AI assistant."},
]


def recipe_in(folder: Path, data: str):
    (folder / "identity.json").write_text(json.dumps(IDENTITY, ensure_ascii=False), "utf-8")
    body = f'[model]\npath = "builtin:tiny-glm4"\n[data]\ntrain = ["identity.json"]\n{data}\n'
    return load_recipe(write_recipe(folder, body))


@pytest.mark.parametrize(
    ("syntax", "text"),
    [("{{name}}", "I am {{ name }} of {{author}}."), ("[NAME]", "I am [NAME] of [AUTHOR]."),
     ("<NAME>", "I am <NAME> of <AUTHOR>.")],
)  # fmt: skip
def test_each_syntax_is_filled_from_lower_case_variables(syntax, text):
    filled = fill({"output": [text]}, {"name": "Aurora", "author": "ACME"}, syntax, "f:1")
    assert filled == {"output": ["I am Aurora of ACME."]}


def test_a_placeholder_of_the_chosen_syntax_without_a_value_names_record_and_key():
    with pytest.raises(UsageError, match=r'f:3: placeholder <AUTHOR> has no value; add author = "..."'):
        fill("<NAME> by <AUTHOR>", {"name": "Aurora"}, "<NAME>", "f:3")


def test_identity_data_with_angle_placeholders_trains_the_filled_names(tmp_path):
    recipe = recipe_in(tmp_path, 'placeholders = "<NAME>"\nvariables = { name = "Aurora", author = "ACME" }')
    read = read_lists(recipe.data)
    assert read.train[0].messages[-1].content == "您好，我是 Aurora，一个由 ACME 开发的 AI 助手。"
    assert read.warnings == []


def test_unfilled_placeholders_of_another_syntax_are_warned_with_counts_and_an_example(
    tmp_path, tokenizer, glm4
):
    recipe = recipe_in(tmp_path, "")
    prepared = prepare_data(recipe.data, glm4, tokenizer, tmp_path / "prepared")
    (warning,) = prepared.sources["warnings"]
    assert "5 unfilled <NAME> placeholders" in warning and "<NAME> x3, <AUTHOR> x2" in warning
    assert "identity.json record 0: 您好，我是 <NAME>" in warning
    assert "data.placeholders = '<NAME>'" in warning and 'author = "...", name = "..."' in warning


def test_ordinary_brackets_and_tags_are_not_taken_for_placeholders():
    scan = Scan("{{name}}")
    scan.add({"output": "Pick [A] or [B]; <br> and <div> are HTML; {name} is Python."}, "f:1")
    assert scan.warnings("data") == []
