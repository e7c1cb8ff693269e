"""Fuzz tier (`make test-fuzz`): bad recipes generated from the recipe schema itself (a new key is covered the day it
is added), bad data records, damaged model folders and damaged run directories, each run through the real CLI entry
point in this process. Every input must end in exit 0 (accepted and handled) or exit 2 with one `error:` line,
never a traceback, and a refused input must leave nothing new on disk. The counts are printed (run with -s) and
written to $GLMTUNE_FUZZ_REPORT when it is set.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
import tomli_w
from conftest import TINY_DATA, tiny_recipe
from test_robust import STEPS, snapshot

pytestmark = pytest.mark.fuzz
TALLY: Counter[str] = Counter()


def run_cli(capsys, *args) -> tuple[int, str]:
    from glmtune.cli import main

    sys.argv = ["glmtune", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def judge(capsys, root: Path, *args) -> tuple[int, str]:
    """Run one input, tally it, and assert the promise: accepted, or one line and nothing new under `root`."""
    errors = Path(os.environ["GLMTUNE_CACHE"]) / "errors"
    before, tracebacks = snapshot(root), len(list(errors.glob("*"))) if errors.is_dir() else 0
    code, err = run_cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    TALLY["inputs"] += 1
    if code == 0:
        TALLY["accepted"] += 1
        return code, err
    one_line = (
        code == 2
        and lines
        and lines[-1].startswith("error:")
        and sum(line.startswith("error:") for line in lines) == 1
    )
    traced = (
        "Traceback" in err
        or code not in (0, 2)
        or (errors.is_dir() and len(list(errors.glob("*"))) > tracebacks)
    )
    left = snapshot(root) != before
    TALLY["one-line exit 2"] += bool(one_line and not traced)
    TALLY["tracebacks"] += traced
    TALLY["leftovers"] += left
    assert one_line and not traced, (args, code, err[-1500:])
    assert not left, (args, sorted(set(snapshot(root)) ^ set(before)))
    return code, err


# ---- recipes, generated from the schema -------------------------------------------------------------------------


def leaf_fields():
    """(section, key, JSON schema of the value) for every recipe key."""
    from glmtune.recipe import Recipe

    schema = Recipe.model_json_schema()
    for section, ref in schema["properties"].items():
        target = ref.get("$ref") or ref.get("allOf", [{}])[0].get("$ref")
        for key, spec in schema["$defs"][target.rsplit("/", 1)[-1]]["properties"].items():
            yield section, key, spec


def bad_values(spec: dict) -> list:
    """Values a key of this schema should refuse (or, where the schema allows them, handle)."""
    options = spec.get("anyOf", [spec])
    kinds = {option.get("type") for option in options}
    values: list = [{"nested": 1}, [[1], "x"]]
    for option in options:
        low = option.get("minimum", option.get("exclusiveMinimum"))
        high = option.get("maximum", option.get("exclusiveMaximum"))
        if option.get("type") in ("integer", "number"):
            values += ["12", True, math.inf, -math.inf, math.nan, 10**30, -(10**30), 1.5]
            values += [
                v
                for v in (low - 1 if low is not None else None, high + 1 if high is not None else None)
                if v is not None
            ]
        if option.get("type") == "boolean":
            values += ["on", 1, 0, "true"]
        if option.get("type") == "string":
            values += [1, "", "x" * 300, "../x", "/abs/path", "\x01", "nope"]
        if option.get("type") == "array":
            values += ["x", [], [1], [""], [{}]]
        if "enum" in option or "const" in option:
            values += ["nope", 7]
    return [v for v in values if not ("boolean" in kinds and isinstance(v, bool))]


def recipe_cases():
    for section, key, spec in leaf_fields():
        for index, value in enumerate(bad_values(spec)):
            yield pytest.param(section, key, value, id=f"{section}.{key}-{index}")
    for section in ("run", "model", "data", "train", "lora", "launch", "export", "eval", "generation"):
        yield pytest.param(section, "no_such_key", 1, id=f"{section}.unknown")
        yield pytest.param(section, None, [1, 2], id=f"{section}-not-a-table")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    tiny_recipe(folder, "builtin:tiny-glm4")
    return folder


@pytest.mark.parametrize(("section", "key", "value"), list(recipe_cases()))
def test_bad_recipe_values(capsys, project, section, key, value):
    import tomllib

    raw = tomllib.loads((project / "recipe.toml").read_text())
    raw["data"]["train"] = [str(project / "d.jsonl")]
    if key is None:
        raw[section] = value
    else:
        raw.setdefault(section, {})[key] = value
    try:
        text = tomli_w.dumps(raw)
    except (TypeError, ValueError):
        pytest.skip("not expressible in TOML")
    path = project / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    try:
        judge(capsys, project, "train", path, "--dry-run")
    finally:
        path.unlink()


# ---- data records ------------------------------------------------------------------------------------------------

RECORDS = {
    "alpaca": {"instruction": "q", "input": "", "output": "a", "system": "s", "history": [["q0", "a0"]]},
    "context_target": {"context": "q", "target": "a"},
    "messages": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
}
BAD_FIELD_VALUES = [None, 1, 2.5, True, [], {}, ["x"], {"a": "b"}, "", "\ud800", "{{unknown}}", "x" * 100_000]


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def data_cases():
    for fmt, record in RECORDS.items():
        for key in record:
            for index, value in enumerate(BAD_FIELD_VALUES):
                yield pytest.param(json.dumps(record | {key: value}) + "\n", fmt, id=f"{fmt}.{key}-{index}")
        turns = next((k for k in ("messages", "conversations") if k in record), None)
        if turns:
            speaker, text = ("role", "content") if turns == "messages" else ("from", "value")
            for index, value in enumerate([[], {}, "robot", None, 3]):
                bad = record | {turns: [{speaker: value, text: "q"}, record[turns][1]]}
                yield pytest.param(json.dumps(bad) + "\n", fmt, id=f"{fmt}.role-{index}")
    for index, text in enumerate(["", "\n\n", "{oops\n", "[]\n", "3\n", '"x"\n', deep(100_000) + "\n",
                                  json.dumps(TINY_DATA[0]) + "\n" + "{bad\n", b"\xff\xfe\x00 not utf-8"]):  # fmt: skip
        yield pytest.param(text, "auto", id=f"lines-{index}")


@pytest.mark.parametrize(("text", "fmt"), list(data_cases()))
def test_bad_data(capsys, tmp_path, text, fmt):
    tiny_recipe(tmp_path, "builtin:tiny-glm4")
    data = tmp_path / "d.jsonl"
    data.write_bytes(text) if isinstance(text, bytes) else data.write_text(text, encoding="utf-8")
    judge(capsys, tmp_path, "prepare", tmp_path / "recipe.toml", "--set", f'data.format="{fmt}"')


def test_a_directory_named_like_a_data_file(capsys, tmp_path):
    tiny_recipe(tmp_path, "builtin:tiny-glm4")
    (tmp_path / "d.jsonl").unlink()
    (tmp_path / "d.jsonl").mkdir()
    (tmp_path / "d.jsonl" / "x.json").mkdir()
    judge(capsys, tmp_path, "prepare", tmp_path / "recipe.toml")


# ---- model folders -----------------------------------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    elif how == "garbage":
        path.write_bytes(os.urandom(64))
    else:  # a JSON value of the wrong shape
        path.write_text(how, encoding="utf-8")


DAMAGE = ["delete", "empty", "truncate", "garbage", "[]", '"x"', "{}"]


def model_cases():
    from glmtune.checkpoints.tiny import builtin_path

    for file in sorted(p.name for p in builtin_path("tiny-glm4").iterdir()):
        for how in DAMAGE:
            yield pytest.param(file, how, id=f"{file}-{how}")
    for key, value in [
        ("hidden_size", 320),
        ("num_hidden_layers", 5),
        ("model_type", None),
        ("vocab_size", 3),
    ]:
        yield pytest.param("config.json", {key: value}, id=f"config.{key}")


@pytest.mark.parametrize(("file", "how"), list(model_cases()))
def test_damaged_model_folder(capsys, tmp_path, tiny_dir, file, how):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    if isinstance(how, dict):
        config = json.loads((model / file).read_text()) | how
        (model / file).write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    else:
        damage(model / file, how)
    tiny_recipe(tmp_path, str(model))
    judge(capsys, tmp_path, "prepare", tmp_path / "recipe.toml")


# ---- run directories ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from test_cli import glmtune

    folder = tmp_path_factory.mktemp("fuzzrun")
    tiny_recipe(folder, "builtin:tiny-glm4")
    result = glmtune("train", folder / "recipe.toml", *STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "runs" / "run"


RUN_JSON = ["[]", '"x"', "{}", "{", '{"family": "glm4"}', '{"family": "nope", "status": "complete"}']
RUN_DAMAGE = [("run.json", how) for how in [*RUN_JSON, "delete"]] + [
    ("run.json", {"family": None}), ("run.json", {"status": "training"}), ("run.json", {"weights": None}),
    ("run.json", {"base_model": {"path": "/nowhere"}}), ("run.json", {"base_model": "x"}),
    ("recipe.toml", "garbage"), ("recipe.toml", "delete"), ("recipe.toml", "[model]\npath = 1\n"),
    ("adapter/adapter_config.json", "delete"), ("adapter/adapter_config.json", "[]"),
    ("adapter/adapter_config.json", "garbage"), ("adapter/adapter_model.safetensors", "delete"),
    ("adapter/adapter_model.safetensors", "truncate"), ("adapter/adapter_model.safetensors", "empty"),
    ("tokenizer", "delete-folder"), ("tokenizer/tokenizer.json", "garbage"), ("tokenizer/tokenizer.json", "[]"),
    ("tokenizer/tokenizer_config.json", "{"),
]  # fmt: skip


@pytest.mark.parametrize("command", ["chat", "export", "eval"])
@pytest.mark.parametrize(("file", "how"), RUN_DAMAGE, ids=[f"{f}-{str(h)[:12]}" for f, h in RUN_DAMAGE])
def test_damaged_run_directory(capsys, run_dir, tmp_path, command, file, how):
    damaged = tmp_path / "run"
    shutil.copytree(run_dir, damaged)
    target = damaged / file
    if how == "delete-folder":
        shutil.rmtree(target)
    elif isinstance(how, dict):
        info = json.loads(target.read_text()) | how
        target.write_text(json.dumps({k: v for k, v in info.items() if v is not None}))
    else:
        damage(target, how)
    args = {"chat": ["--query", "hi"], "export": ["--out", tmp_path / "out"], "eval": []}[command]
    judge(capsys, tmp_path, command, damaged, *args)


def test_zz_report():
    """Printed last (the module runs in order): the counts the issue's closing note asks for."""
    report = dict(TALLY)
    print("\nfuzz:", json.dumps(report))
    if os.environ.get("GLMTUNE_FUZZ_REPORT"):
        Path(os.environ["GLMTUNE_FUZZ_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
    assert report.get("tracebacks", 0) == 0 and report.get("leftovers", 0) == 0
