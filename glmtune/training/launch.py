"""How `glmtune train` runs: in this process, or re-executed as workers under torchrun / the DeepSpeed launcher.

Nothing here is read from environment variables: the recipe's [launch] section decides, `train --dry-run` prints
the exact command, the environment the workers get, the DeepSpeed config and a per-GPU memory estimate, and a plan
that cannot work is refused before any process starts. Workers read the resolved recipe from the run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError
from glmtune.recipe import Recipe
from glmtune.training.loss import resolve_loss

GIB = 1024**3


@dataclass(frozen=True)
class LaunchPlan:
    command: list[str] = field(default_factory=list)  # empty: train in this process
    env: dict[str, str] = field(default_factory=dict)  # set for the workers on top of the current environment
    deepspeed: dict[str, Any] | None = None


def deepspeed_config(recipe: Recipe) -> dict[str, Any] | None:
    """The DeepSpeed config for the recipe: a shipped preset or the user's JSON file."""
    launch = recipe.launch
    if launch.strategy != "deepspeed":
        return None
    if launch.zero.endswith(".json"):
        config = _read_json(Path(launch.zero))
    else:
        config = json.loads(
            (resources.files("glmtune.training") / "presets" / f"{launch.zero}.json").read_text(
                encoding="utf-8"
            )
        )
    if zero_stage(config) == 3:
        # Without it the Trainer saves a sharded DeepSpeed checkpoint instead of weights: the "empty ZeRO-3 save".
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"launch.zero: DeepSpeed config {path} not found") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: invalid JSON in the DeepSpeed config ({exc.msg})") from None


def zero_stage(config: dict[str, Any] | None) -> int:
    return int((config or {}).get("zero_optimization", {}).get("stage", 0))


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def plan_launch(recipe: Recipe, run_dir: Path, resume: bool = False) -> LaunchPlan:
    launch = recipe.launch
    if launch.strategy == "single":
        return LaunchPlan()
    worker = ["-m", "glmtune.training.worker", str(run_dir.resolve())] + (["--resume"] if resume else [])
    env = {"PYTHONUNBUFFERED": "1"}
    if not has_cuda():
        # DeepSpeed on CPU: its CPU accelerator and gloo; one thread pool per worker instead of oversubscribing.
        env |= {
            "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // launch.processes_per_node)),
        }
    if launch.nodes > 1:
        command = [
            sys.executable,  # the launcher of this environment's DeepSpeed, whether or not the venv is activated
            "-m",
            "deepspeed.launcher.runner",
            "--hostfile",
            str(launch.hostfile),
            "--num_nodes",
            str(launch.nodes),
            "--num_gpus",
            str(launch.processes_per_node),
            "--master_addr",
            launch.master_addr,
            "--master_port",
            str(launch.master_port),
            "--module",
            *worker[1:],
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(launch.processes_per_node),
            "--master_addr",
            launch.master_addr,
            "--master_port",
            str(launch.master_port),
            *worker,
        ]
    return LaunchPlan(command, env, deepspeed_config(recipe))


def run_workers(plan: LaunchPlan) -> None:
    result = subprocess.run(plan.command, env={**os.environ, **plan.env}, check=False)
    if result.returncode == 2:
        raise SystemExit(2)  # a worker already said what is wrong, in one line
    if result.returncode != 0:
        raise UsageError(f"training workers failed (exit code {result.returncode}); their messages are above")


def init_distributed(recipe: Recipe) -> None:
    """In a DeepSpeed worker: create accelerate's state first, with gloo on CPU (Trainer would pick a wrong one)."""
    if recipe.launch.strategy != "deepspeed":
        return
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # this worker *is* a DeepSpeed worker; tell accelerate so
    from accelerate import PartialState

    PartialState(backend="nccl" if has_cuda() else "gloo")


def estimate_memory(model, recipe: Recipe, trainable: int, total: int) -> dict[str, float]:
    """Per-GPU memory in GiB for weights, gradients, optimizer states and activations (ZeRO partitioning applied)."""
    from glmtune.checkpoints.load import torch_dtype

    config = model.config
    processes = recipe.launch.processes_per_node * recipe.launch.nodes
    stage = zero_stage(deepspeed_config(recipe))
    offload = "offload" in recipe.launch.zero and recipe.launch.strategy == "deepspeed"
    width = torch_dtype(recipe.model.dtype).itemsize
    master_in_weights = (
        recipe.method.kind == "full" and recipe.launch.strategy == "single"
    )  # fp32 weights, see train
    weight_bytes = {"8bit": 1.0, "4bit": 0.55}.get(recipe.launch.quantize, 4 if master_in_weights else width)
    weights = total * weight_bytes / (processes if stage == 3 else 1) * (0 if offload and stage == 3 else 1)
    # LoRA adapters (peft keeps them fp32) and fp32 master weights train in fp32: no separate master copy.
    trainable_width = 4 if recipe.method.kind == "lora" or master_in_weights else width
    gradients = trainable * trainable_width / (processes if stage >= 2 else 1)
    # Adam: first and second moments, plus an fp32 master copy when the trained weights are 16-bit.
    adam_bytes = 8 + (4 if trainable_width < 4 else 0)
    optimizer = trainable * adam_bytes / (processes if stage >= 1 else 1) * (0 if offload else 1)
    activations = _activation_bytes(config, recipe, width)
    loss = resolve_loss(recipe.train.loss, config.model_type, stage)
    logits = logits_bytes(config, recipe, width, loss)
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations,
             f"logits ({loss} loss)": logits}  # fmt: skip
    estimate = {name: value / GIB for name, value in parts.items()}
    estimate["total"] = sum(estimate.values()) * 1.1  # allocator fragmentation and CUDA context
    if loss != "plain":
        estimate["saved against full logits"] = (logits_bytes(config, recipe, width, "plain") - logits) / GIB
    return estimate


def _activation_bytes(config, recipe: Recipe, width: int) -> float:
    # Korthikanti et al. 2022: per layer s*b*h*(34 + 5*a*s/h) bytes at 16 bit without recomputation;
    # with checkpointing only each layer's input (s*b*h values) is kept.
    s, b = recipe.data.max_length, recipe.train.batch_size
    h, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    if recipe.train.gradient_checkpointing:
        per_layer = s * b * h * width
    else:
        per_layer = s * b * h * (34 + 5 * heads * s / h) * width / 2
    return layers * per_layer


def logits_bytes(config, recipe: Recipe, width: int, loss: str) -> float:
    """The loss's peak: logits in the model's dtype, their fp32 copy and fp32 log-softmax, for every token of the
    batch (plain) or for one chunk of `glmtune.training.loss.CHUNK_TOKENS` tokens at a time (chunked, fused)."""
    from glmtune.training.loss import CHUNK_TOKENS

    tokens = recipe.data.max_length * recipe.train.batch_size
    if loss != "plain":
        tokens = min(tokens, CHUNK_TOKENS)
    return tokens * config.vocab_size * (width + 8)


def gpu_memory_gib(recipe: Recipe) -> float | None:
    if recipe.launch.gpu_memory_gb:
        return recipe.launch.gpu_memory_gb * 1e9 / GIB
    if has_cuda():
        import torch

        return torch.cuda.get_device_properties(0).total_memory / GIB
    return None


def refuse_impossible(estimate: dict[str, float], recipe: Recipe) -> None:
    available = gpu_memory_gib(recipe)
    if available is not None and estimate["total"] > available:
        raise UsageError(
            f"launch: the plan needs about {estimate['total']:.1f} GiB per GPU but {available:.1f} GiB are available; "
            "use LoRA, launch.quantize, a ZeRO-3/offload preset, more processes, gradient checkpointing or a smaller batch"
        )
