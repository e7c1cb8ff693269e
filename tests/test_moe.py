"""GLM-4.5's architecture (glm4_moe): LoRA on attention and the fused routed experts trains, merges and exports."""

import json

import torch
from conftest import ROOT
from safetensors.torch import load_file

from glmtune.checkpoints.export import export_run
from glmtune.recipe import load_recipe
from glmtune.training.train import train


def test_tiny_glm4_moe_lora_trains_and_exports(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "demo.toml", [f"run.output_dir={tmp_path}", "model.path='builtin:tiny-glm4-moe'",
                                                         "train.max_steps=6", "train.logging_steps=1"])  # fmt: skip
    run_dir = train(recipe)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["family"] == "glm4" and run["summary"]["last_loss"] < run["summary"]["first_loss"]
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert any("self_attn" in name for name in adapter) and any("mlp.experts" in name for name in adapter)
    out = export_run(run_dir, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "glm4_moe"
    merged = load_file(out / "model.safetensors")
    assert any(".experts." in name for name in merged)  # saved in the checkpoint layout transformers writes
    assert all(torch.isfinite(t).all() for t in merged.values())


def test_tiny_glm4_moe_full_fine_tuning_exports(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "demo.toml", [f"run.output_dir={tmp_path}", "model.path='builtin:tiny-glm4-moe'",
                                                         "method.kind='full'", "train.max_steps=3"])  # fmt: skip
    run_dir = train(recipe)
    assert json.loads((run_dir / "run.json").read_text())["weights"] == "model"
    out = export_run(run_dir, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["model_type"] == "glm4_moe"
