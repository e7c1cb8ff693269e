"""Launch plans, refusals before any process starts, quantized LoRA, the NaN watchdog and the loss curve."""

import json

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

from glmtune.errors import UsageError
from glmtune.recipe import LaunchSection
from glmtune.recipe_files import load_recipe
from glmtune.training.launch import BACKENDS, estimate_memory, plan_launch
from glmtune.training.train import train

DEMO = ROOT / "recipes" / "demo.toml"


def demo(tmp_path, *overrides):
    return load_recipe(DEMO, [f"run.output_dir={tmp_path}", *overrides])


def test_dry_run_shows_launcher_environment_deepspeed_config_and_memory(tmp_path, capsys):
    recipe = demo(
        tmp_path, "launch.strategy='deepspeed'", "launch.zero='zero3'", "launch.processes_per_node=2"
    )
    train(recipe, dry_run=True)
    out, err = capsys.readouterr()
    flat = " ".join(err.split())
    assert (
        "torch.distributed.run" in flat and "--nproc_per_node 2" in flat and "glmtune.training.worker" in flat
    )
    assert "DS_ACCELERATOR=cpu" in flat
    assert json.loads(out[out.index("{\n") :])["zero_optimization"]["stage"] == 3
    assert "memory estimate per GPU" in flat and "optimizer" in flat
    assert not any(tmp_path.iterdir())


def test_multi_node_uses_the_deepspeed_launcher_with_the_recipes_hostfile(tmp_path):
    (tmp_path / "hosts").write_text("node1 slots=8\nnode2 slots=8\n")
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text(f'extends = "{DEMO}"\n[launch]\nstrategy = "deepspeed"\nnodes = 2\nhostfile = "hosts"\n'
                           'processes_per_node = 8\nmaster_addr = "10.0.0.1"\n')  # fmt: skip
    plan = plan_launch(load_recipe(recipe_file), tmp_path / "run")
    assert plan.command[1:5] == ["-m", "deepspeed.launcher.runner", "--hostfile", str(tmp_path / "hosts")]
    assert plan.command[plan.command.index("--master_addr") + 1] == "10.0.0.1"
    assert "--module" in plan.command and plan.command[-1].endswith("run")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["launch.strategy='deepspeed'", "launch.quantize='8bit'"], "quantize is for single-process LoRA"),
        (["method.kind='full'", "launch.quantize='4bit'"], "quantize needs method.kind = 'lora'"),
        (["launch.nodes=2", "launch.strategy='deepspeed'"], "needs launch.hostfile"),
        (["launch.nodes=2", "launch.hostfile='hosts'"], "need strategy = 'deepspeed'"),
        (["launch.strategy='deepspeed'", "launch.zero='zero4'"], "neither a preset"),
        (["model.dtype='float16'"], "float16 overflows on glm4"),
        (["method.kind='full'", "launch.gpu_memory_gb=0.001", "model.dtype='bfloat16'"], "GiB per GPU but"),
    ],
    ids=[
        "quantize-zero",
        "quantize-full",
        "multinode-hostfile",
        "multinode-single",
        "unknown-preset",
        "fp16-glm4",
        "does-not-fit",
    ],
)
def test_impossible_plans_are_refused_before_anything_starts(tmp_path, overrides, message):
    with pytest.raises(UsageError, match=message):
        train(demo(tmp_path, *overrides), dry_run=True)
    assert not any(tmp_path.iterdir())


def test_every_strategy_a_recipe_accepts_has_a_backend():
    assert set(LaunchSection.model_fields["strategy"].annotation.__args__) == set(BACKENDS)


def test_memory_estimate_reads_offload_from_the_resolved_deepspeed_config(tmp_path):
    from glmtune.checkpoints.load import open_base

    preset = json.loads((ROOT / "glmtune" / "training" / "presets" / "zero3_offload.json").read_text())
    (tmp_path / "mine.json").write_text(json.dumps(preset))  # offloads, though its name does not say so
    estimates = {}
    for zero in ("zero3", "zero3_offload", str(tmp_path / "mine.json")):
        recipe = demo(tmp_path, "launch.strategy='deepspeed'", f"launch.zero='{zero}'", "method.kind='full'")
        model = open_base(recipe.model).meta_model()
        total = sum(p.numel() for p in model.parameters())
        estimates[zero] = estimate_memory(model, recipe, total, total)
    mine = estimates[str(tmp_path / "mine.json")]
    assert mine == estimates["zero3_offload"]
    assert mine["optimizer"] == 0 and mine["weights"] == 0 < estimates["zero3"]["optimizer"]


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_lora_trains_and_exports_at_full_precision(tmp_path, bits):
    from glmtune.checkpoints.export import export_run

    run_dir = train(demo(tmp_path, f"launch.quantize='{bits}'", "train.max_steps=4", "train.logging_steps=1"))
    run = json.loads((run_dir / "run.json").read_text())
    assert run["quantize"] == bits and run["summary"]["last_loss"] < run["summary"]["first_loss"]
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert any(torch.count_nonzero(t) for name, t in adapter.items() if "lora_B" in name)
    out = export_run(run_dir, tmp_path / "export")
    merged = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in merged.values())  # merged into the full-precision base


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_nan_watchdog_names_the_step_and_what_to_try(tmp_path, loss):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from glmtune.training.callbacks import NanWatchdog

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    state = TrainerState(global_step=17)
    NanWatchdog().on_log(args, state, TrainerControl(), logs={"loss": 1.25})
    with pytest.raises(
        UsageError,
        match=r"loss became (nan|inf) at step 17 \(fp32\); the run stopped; lower train.learning_rate",
    ):
        NanWatchdog().on_log(args, state, TrainerControl(), logs={"loss": loss})


def test_loss_curve_is_drawn(tmp_path):
    run_dir = train(demo(tmp_path, "train.max_steps=3", "train.logging_steps=1"))
    png = run_dir / "loss.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_logging_needs_the_package(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    with pytest.raises(UsageError, match="tensorboard is not installed"):
        train(demo(tmp_path, "train.report_to=['tensorboard']"))
    assert not any(tmp_path.iterdir())
