"""Completeness checks that run before any work: DeepSpeed JSON shape (at --dry-run), safetensors headers."""

import json

import pytest
from conftest import write_recipe
from test_cli import assert_usage_error, glmtune

from glmtune.checkpoints.integrity import check_deepspeed_json, safetensors_shapes
from glmtune.errors import UsageError
from glmtune.recipe_files import load_recipe


def deepspeed_recipe(tmp_path, config):
    (tmp_path / "ds.json").write_text(json.dumps(config) if not isinstance(config, str) else config)
    body = '[model]\npath = "builtin:tiny-glm4"\n[data]\ntrain = ["d.jsonl"]\n[launch]\nstrategy = "deepspeed"\nzero = "ds.json"\n'
    return write_recipe(tmp_path, body)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"zero_optimization": {"stage": "x"}}, "zero_optimization.stage must be 0, 1, 2 or 3"),
        ({"zero_optimization": {"stage": True}}, "zero_optimization.stage"),
        ({"zero_optimization": []}, "zero_optimization must be an object"),
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "gpu"}}}, "offload_optimizer"),
        ({"train_micro_batch_size_per_gpu": -1}, "train_micro_batch_size_per_gpu"),
        ({"bf16": True}, "bf16 must be an object"),
        ([], "expected a JSON object"),
        ("{", "unreadable JSON"),
    ],
)
def test_deepspeed_json_shape(tmp_path, config, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        check_deepspeed_json(load_recipe(deepspeed_recipe(tmp_path, config)))


def test_a_good_deepspeed_json_passes(tmp_path):
    config = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}, "bf16": {"enabled": "auto"},
              "train_micro_batch_size_per_gpu": "auto"}  # fmt: skip
    check_deepspeed_json(load_recipe(deepspeed_recipe(tmp_path, config)))


def test_dry_run_refuses_a_bad_stage_in_one_line(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    result = glmtune("train", deepspeed_recipe(tmp_path, {"zero_optimization": {"stage": "x"}}), "--dry-run")
    assert_usage_error(result, "ds.json", "zero_optimization.stage")


def test_truncated_safetensors_is_named(tmp_path, tiny_dir):
    weights = (tiny_dir / "model.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(weights[: len(weights) - 10])
    with pytest.raises(UsageError, match="m.safetensors: truncated"):
        safetensors_shapes(tmp_path / "m.safetensors")
    assert safetensors_shapes(tiny_dir / "model.safetensors")  # the intact file reads
