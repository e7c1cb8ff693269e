"""The CLI as users meet it: --help without torch, and bad input ending in one line, exit 2, nothing written."""

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, write_recipe

COMMANDS = ["prepare", "train", "export", "chat", "eval"]


def glmtune(*args, cwd=None, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "glmtune.cli", *map(str, args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_help_imports_no_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from glmtune.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; print(r.output)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_shows_an_example(command):
    result = glmtune(command, "--help")
    assert result.returncode == 0 and "Example: glmtune " + command in result.stdout


# What rich leaves when it takes bracketed help text for markup: "data and [eval];" -> "data and ;".
HELP_HOLE = re.compile(r" [;.,:](?=\s|$)|\(\s*\)|\[\s*\]")


@pytest.mark.parametrize(
    "command", [[], *([c] for c in [*COMMANDS, "convert"])], ids=lambda c: c[0] if c else "top"
)
def test_help_texts_have_no_holes(command):
    from typer.testing import CliRunner

    from glmtune.cli import app

    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    holes = [line.strip() for line in result.output.splitlines() if HELP_HOLE.search(line)]
    assert not holes, holes


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and len([line for line in lines if line.startswith("error:")]) == 1
    text = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in text, text


def recipe_with(tmp_path, data_lines=None, extra="", model='"builtin:tiny-glm4"'):
    if data_lines is not None:
        (tmp_path / "d.jsonl").write_text("\n".join(data_lines) + "\n", encoding="utf-8")
    body = (
        f'[run]\noutput_dir = "{tmp_path / "runs"}"\n[model]\npath = {model}\n[data]\ntrain = ["d.jsonl"]\n'
        + extra
    )
    return write_recipe(tmp_path, body)


GOOD = json.dumps({"instruction": "q", "output": "a"})


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        (lambda p: p / "missing.toml", ["missing.toml", "recipe file not found"]),
        (lambda p: write_recipe(p, "[model\npath = 1\n"), ["invalid TOML", "line 1"]),
        (lambda p: recipe_with(p, [GOOD], "[train]\nlernrate = 1\n"), ["train.lernrate: unknown key"]),
        (lambda p: recipe_with(p, [GOOD], '[train]\nepochs = "x"\n'), ["train.epochs:"]),
    ],
    ids=["missing-recipe", "toml-syntax", "unknown-key", "wrong-type"],
)
def test_recipe_errors(tmp_path, setup, fragments):
    assert_usage_error(glmtune("train", setup(tmp_path)), *fragments)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        ([GOOD, '{"instruction": "q",'], ["d.jsonl:2: invalid JSON line"]),
        ([json.dumps({"instruction": "q"})], ["d.jsonl:1: missing field 'output'"]),
        ([json.dumps({"instruction": "q", "output": ""})], ["d.jsonl:1: empty answer"]),
        (
            [json.dumps({"instruction": "q", "output": "I am {{name}}"})],
            ["placeholder {{name}} has no value"],
        ),
    ],
    ids=["malformed-json-line", "missing-field", "empty-answer", "unfilled-placeholder"],
)
def test_data_errors(tmp_path, lines, fragments):
    assert_usage_error(glmtune("prepare", recipe_with(tmp_path, lines)), *fragments)
    assert not (tmp_path / "runs" / "run" / "data").exists()


def test_nonexistent_model_path(tmp_path):
    result = glmtune("train", recipe_with(tmp_path, [GOOD], model=f'"{tmp_path / "no-model"}"'))
    assert_usage_error(result, "model.path:", "no-model", "glmtune never downloads")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["chat", "export", "eval"])
def test_commands_refuse_a_folder_that_is_not_a_run_or_model(tmp_path, command):
    (tmp_path / "junk").mkdir()
    args = [command, tmp_path / "junk"] + (["--out", tmp_path / "out"] if command == "export" else [])
    assert_usage_error(glmtune(*args), "junk")
    assert not (tmp_path / "out").exists()


def test_prepare_show_prints_samples_and_stats(tmp_path):
    result = glmtune(
        "prepare", ROOT / "recipes" / "demo.toml", "--set", f"run.output_dir={tmp_path}", "--show", "1"
    )
    assert result.returncode == 0, result.stderr
    assert "sample 0" in result.stdout and "[gMASK]<sop><|user|>" in result.stdout
    assert "supervised_tokens" in result.stderr
    assert (tmp_path / "demo" / "data" / "fingerprint.txt").is_file()


def test_set_reads_relative_paths_from_the_current_folder_and_says_so(tmp_path):
    folder, here = tmp_path / "recipes", tmp_path / "here"
    folder.mkdir()
    here.mkdir()
    recipe = recipe_with(folder, [GOOD])
    (here / "mine.jsonl").write_text(GOOD + "\n", encoding="utf-8")
    result = glmtune("prepare", recipe, "--set", "data.train=['mine.jsonl']", cwd=here)
    assert result.returncode == 0, result.stderr[-3000:]
    missing = glmtune(
        "prepare", recipe, "--set", "data.train=['d.jsonl']", cwd=here
    )  # d.jsonl: beside the recipe
    assert_usage_error(
        missing, f"{here / 'd.jsonl'} not found", "from the current folder when given with --set"
    )
    recipe.write_text(recipe.read_text().replace('"d.jsonl"', '"gone.jsonl"'), encoding="utf-8")
    in_recipe = glmtune("prepare", recipe, cwd=here)
    assert_usage_error(in_recipe, f"{recipe.parent / 'gone.jsonl'} not found", "folder of the recipe file")
