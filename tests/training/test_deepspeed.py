"""DeepSpeed ZeRO with 2 CPU processes (gloo) through the real CLI: saved weights are whole and reload exactly.

Opt-in tier (`make test-deepspeed`, also run by CI): DeepSpeed compiles its C++ ops on first use; set
TORCH_EXTENSIONS_DIR to keep them between runs.
"""

import json

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file
from test_cli import glmtune

from glmtune.checkpoints.load import load_for_inference

pytestmark = pytest.mark.deepspeed

CASES = [("zero2", "lora"), ("zero3", "lora"), ("zero3", "full"), ("zero3_offload", "lora")]


@pytest.mark.parametrize(("zero", "method"), CASES, ids=[f"{z}-{m}" for z, m in CASES])
def test_zero_run_saves_whole_weights_that_reload_exactly(tmp_path, zero, method):
    result = glmtune(
        "train", ROOT / "recipes" / "demo.toml", "--set", f"run.output_dir={tmp_path}",
        "--set", "launch.strategy='deepspeed'", "--set", "launch.processes_per_node=2",
        "--set", f"launch.zero='{zero}'", "--set", f"method.kind='{method}'",
        "--set", "train.max_steps=3", "--set", "train.learning_rate=1e-3", "--set", "train.batch_size=4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "demo"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["method"] == method
    weights = run_dir / (
        "adapter/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"
    )
    tensors = load_file(weights)
    assert tensors and all(t.numel() > 0 for t in tensors.values())  # ZeRO-3 must not leave empty shards
    probe = load_file(run_dir / "final_logits.safetensors")
    loaded = load_for_inference(run_dir)
    with torch.no_grad():
        logits = loaded.model(input_ids=probe["input_ids"]).logits
    assert torch.allclose(logits, probe["logits"], atol=1e-5)


def test_export_of_a_zero3_run(tmp_path):
    result = glmtune(
        "train", ROOT / "recipes" / "demo.toml", "--set", f"run.output_dir={tmp_path}",
        "--set", "launch.strategy='deepspeed'", "--set", "launch.processes_per_node=2",
        "--set", "launch.zero='zero3'", "--set", "train.max_steps=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    export = glmtune("export", tmp_path / "demo", "--out", tmp_path / "export")
    assert export.returncode == 0, export.stderr[-4000:]
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_zero3_lora_on_a_tiny_moe_registers_its_moe_blocks_as_leaves(tmp_path):
    result = glmtune(
        "train", ROOT / "recipes" / "demo.toml", "--set", f"run.output_dir={tmp_path}",
        "--set", "model.path='builtin:tiny-glm4.5'", "--set", "lora.experts=true",
        "--set", "launch.strategy='deepspeed'", "--set", "launch.processes_per_node=2",
        "--set", "launch.zero='zero3'", "--set", "train.max_steps=3", "--set", "train.batch_size=4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ZeRO-3 leaf modules (each gathered whole): Glm4MoeMoE" in " ".join(result.stderr.split())
    run_dir = tmp_path / "demo"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    tensors = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert any("mlp.experts" in key for key in tensors) and all(t.numel() > 0 for t in tensors.values())
