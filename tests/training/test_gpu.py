"""CUDA tier (`make test-gpu`): bf16 LoRA, 8-bit and 4-bit LoRA merged by export, and 2-GPU ZeRO-2 through the CLI.

Every test skips cleanly without CUDA (the 2-GPU one without two devices), so the tier always collects its tests.
"""

import json

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file
from test_cli import glmtune

from glmtune.recipe_files import load_recipe
from glmtune.training.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEMO = ROOT / "recipes" / "demo.toml"


def demo(tmp_path, *overrides):
    steps = ["train.max_steps=4", "train.logging_steps=1"]
    return load_recipe(DEMO, [f"run.output_dir={tmp_path}", *steps, *overrides])


def lora_b_changed(run_dir) -> bool:
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    return any(bool(torch.count_nonzero(t)) for name, t in adapter.items() if "lora_B" in name)


def test_bf16_lora_steps_on_cuda(tmp_path):
    torch.cuda.reset_peak_memory_stats()
    run_dir = train(demo(tmp_path, "model.dtype='bfloat16'"))
    assert torch.cuda.max_memory_allocated() > 0  # the Trainer put the model on the GPU
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["summary"]["last_loss"] < run["summary"]["first_loss"]
    assert lora_b_changed(run_dir)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_lora_on_cuda_merges_into_the_full_precision_base(tmp_path, bits):
    from glmtune.checkpoints.export import export_run

    run_dir = train(demo(tmp_path, f"launch.quantize='{bits}'", "model.dtype='bfloat16'"))
    run = json.loads((run_dir / "run.json").read_text())
    assert run["quantize"] == bits and run["summary"]["last_loss"] < run["summary"]["first_loss"]
    assert lora_b_changed(run_dir)
    out = export_run(
        run_dir, tmp_path / "export"
    )  # reloads the export and checks its logits against base + adapter
    merged = load_file(out / "model.safetensors")
    assert merged and all(t.dtype in (torch.float32, torch.bfloat16) for t in merged.values())
    assert not any(
        name.endswith(("SCB", "absmax", "quant_map")) for name in merged
    )  # no bitsandbytes leftovers


@pytest.mark.multigpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_zero2_on_two_gpus(tmp_path):
    settings = [
        f"run.output_dir={tmp_path}",
        "launch.strategy='deepspeed'",
        "launch.processes_per_node=2",
        "launch.zero='zero2'",
        "model.dtype='bfloat16'",
        "train.max_steps=3",
        "train.batch_size=4",
    ]
    result = glmtune("train", DEMO, *(arg for setting in settings for arg in ("--set", setting)))
    assert result.returncode == 0, result.stderr[-4000:]
    run = json.loads((tmp_path / "demo" / "run.json").read_text())
    assert run["status"] == "complete"
    assert lora_b_changed(tmp_path / "demo")
