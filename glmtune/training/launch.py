"""How `glmtune train` runs: in this process, or re-executed as workers under torchrun / the DeepSpeed launcher.

Nothing here is read from environment variables: the recipe's [launch] section decides, `train --dry-run` prints
the exact command, the environment the workers get, the DeepSpeed config and a per-GPU memory estimate, and a plan
that cannot work is refused before any process starts. Workers read the resolved recipe from the run directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError
from glmtune.recipe import LaunchSection, Recipe
from glmtune.training.loss import resolve_loss

GIB = 1024**3
ZERO_PRESETS = ("zero2", "zero2_offload", "zero3", "zero3_offload")  # glmtune/training/presets/*.json


@dataclass(frozen=True)
class LaunchPlan:
    command: list[str] = field(default_factory=list)  # empty: train in this process
    env: dict[str, str] = field(default_factory=dict)  # set for the workers on top of the current environment
    deepspeed: dict[str, Any] | None = None
    announce: str = ""  # what `train` prints before it starts the workers


@dataclass(frozen=True)
class Backend:
    """One way to run `train`: everything that differs between launch strategies is a field of its row in BACKENDS."""

    needs: tuple[str, ...]  # packages it imports
    refuses: Callable[[LaunchSection], list[str]]  # the [launch] settings it cannot honour, one message each
    # the launcher's argv around the worker module and its arguments; None: train in this process
    launcher: Callable[[LaunchSection, list[str]], list[str]] | None
    announce: Callable[[LaunchSection], str]  # printed before the workers start
    uses_deepspeed: bool  # a DeepSpeed config for the Trainer, and a distributed state in each worker
    # Full fine-tuning needs fp32 master weights; DeepSpeed keeps its own copy beside 16-bit weights, a single process
    # keeps them in the model (see train._weights_dtype).
    fp32_weights_for_full: bool


def _single_refuses(launch: LaunchSection) -> list[str]:
    if launch.nodes > 1 or launch.processes_per_node > 1:
        return [
            "launch.nodes / processes_per_node > 1 need strategy = 'deepspeed' (strategy 'single' is one process)"
        ]
    return []


def _deepspeed_refuses(launch: LaunchSection) -> list[str]:
    problems = []
    if launch.zero not in ZERO_PRESETS and not launch.zero.endswith(".json"):
        problems.append(
            f"launch.zero: {launch.zero!r} is neither a preset ({', '.join(ZERO_PRESETS)}) nor a .json file"
        )
    if launch.quantize != "none":
        problems.append(
            "launch.quantize is for single-process LoRA: a quantized base cannot be sharded by ZeRO; use strategy = 'single'"
        )
    if launch.nodes > 1 and not launch.hostfile:
        problems.append("launch.nodes > 1 needs launch.hostfile (DeepSpeed's hostfile listing the nodes)")
    return problems


def _deepspeed_launcher(launch: LaunchSection, worker: list[str]) -> list[str]:
    """torchrun on one node; the `deepspeed` launcher with the hostfile across nodes. `sys.executable` runs this
    environment's launchers whether or not the venv is activated."""
    rendezvous = ["--master_addr", launch.master_addr, "--master_port", str(launch.master_port)]
    processes = str(launch.processes_per_node)
    if launch.nodes == 1:
        torchrun = ["torch.distributed.run", "--nnodes", "1", "--nproc_per_node", processes]
        return [sys.executable, "-m", *torchrun, *rendezvous, "-m", *worker]
    runner = [
        "deepspeed.launcher.runner",
        "--hostfile",
        str(launch.hostfile),
        "--num_nodes",
        str(launch.nodes),
    ]
    return [sys.executable, "-m", *runner, "--num_gpus", processes, *rendezvous, "--module", *worker]


BACKENDS: dict[str, Backend] = {
    "single": Backend(
        needs=(),
        refuses=_single_refuses,
        launcher=None,
        announce=lambda launch: "",
        uses_deepspeed=False,
        fp32_weights_for_full=True,
    ),
    "deepspeed": Backend(
        needs=("deepspeed",),
        refuses=_deepspeed_refuses,
        launcher=_deepspeed_launcher,
        announce=lambda launch: (
            f"launching {launch.processes_per_node * launch.nodes} DeepSpeed workers ({launch.zero})"
        ),
        uses_deepspeed=True,
        fp32_weights_for_full=False,
    ),
}


def backend_of(recipe: Recipe) -> Backend:
    return BACKENDS[recipe.launch.strategy]


def check_backend(recipe: Recipe) -> None:
    """Refuse what the chosen backend cannot do, every problem in one message, before any process starts."""
    backend = backend_of(recipe)
    problems = backend.refuses(recipe.launch)
    problems += [
        f"launch.strategy = {recipe.launch.strategy!r} needs the {package} package (pip install {package})"
        for package in backend.needs
        if importlib.util.find_spec(package) is None
    ]
    if problems:
        raise UsageError("; ".join(problems))


def deepspeed_config(recipe: Recipe) -> dict[str, Any] | None:
    """The DeepSpeed config for the recipe: a shipped preset or the user's JSON file."""
    launch = recipe.launch
    if not backend_of(recipe).uses_deepspeed:
        return None
    if launch.zero.endswith(".json"):
        config = _read_json(Path(launch.zero))
    else:
        preset = resources.files("glmtune.training") / "presets" / f"{launch.zero}.json"
        config = json.loads(preset.read_text(encoding="utf-8"))
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


def offloaded(config: dict[str, Any] | None, part: str) -> bool:
    """Whether the DeepSpeed config keeps `part` ("optimizer" or "param") in CPU memory or on NVMe."""
    offload = (config or {}).get("zero_optimization", {}).get(f"offload_{part}") or {}
    return offload.get("device", "none") in ("cpu", "nvme")


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def plan_launch(recipe: Recipe, run_dir: Path, resume: bool = False) -> LaunchPlan:
    check_backend(recipe)
    backend, launch = backend_of(recipe), recipe.launch
    if backend.launcher is None:
        return LaunchPlan()
    worker = ["glmtune.training.worker", str(run_dir.resolve())] + (["--resume"] if resume else [])
    env = {"PYTHONUNBUFFERED": "1"}
    if not has_cuda():
        # DeepSpeed on CPU: its CPU accelerator and gloo; one thread pool per worker instead of oversubscribing.
        env |= {
            "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // launch.processes_per_node)),
        }
    return LaunchPlan(
        backend.launcher(launch, worker), env, deepspeed_config(recipe), backend.announce(launch)
    )


def run_workers(plan: LaunchPlan) -> None:
    result = subprocess.run(plan.command, env={**os.environ, **plan.env}, check=False)
    if result.returncode == 2:
        raise SystemExit(2)  # a worker already said what is wrong, in one line
    if result.returncode != 0:
        raise UsageError(f"training workers failed (exit code {result.returncode}); their messages are above")


def init_distributed(recipe: Recipe) -> None:
    """In a DeepSpeed worker: create accelerate's state first, with gloo on CPU (Trainer would pick a wrong one)."""
    if not backend_of(recipe).uses_deepspeed:
        return
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # this worker *is* a DeepSpeed worker; tell accelerate so
    from accelerate import PartialState

    PartialState(backend="nccl" if has_cuda() else "gloo")


def register_moe_leaves(model, recipe: Recipe) -> list[str]:
    """Under ZeRO-3, make each MoE block (a module holding routed `experts`) one ZeRO-3 leaf: its parameters are
    gathered together, whichever experts this rank's tokens reach. Otherwise ranks whose tokens route differently
    fetch different parameters and can wait on each other forever. Returns the leaf classes' names."""
    if zero_stage(deepspeed_config(recipe)) != 3:
        return []
    classes = sorted(
        {type(module) for module in model.modules() if hasattr(module, "experts")}, key=lambda c: c.__name__
    )
    if classes:
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, classes)
    return [c.__name__ for c in classes]


def estimate_memory(model, recipe: Recipe, trainable: int, total: int) -> dict[str, float]:
    """Per-GPU memory in GiB for weights, gradients, optimizer states and activations (ZeRO partitioning applied)."""
    from glmtune.checkpoints.load import torch_dtype

    config = model.config
    processes = recipe.launch.processes_per_node * recipe.launch.nodes
    ds_config = deepspeed_config(recipe)  # resolved: a preset or the user's JSON, whatever its name
    stage = zero_stage(ds_config)
    width = torch_dtype(recipe.model.dtype).itemsize
    master_in_weights = recipe.method.kind == "full" and backend_of(recipe).fp32_weights_for_full
    weight_bytes = {"8bit": 1.0, "4bit": 0.55}.get(recipe.launch.quantize, 4 if master_in_weights else width)
    on_gpu = 0 if stage == 3 and offloaded(ds_config, "param") else 1
    weights = total * weight_bytes / (processes if stage == 3 else 1) * on_gpu
    # LoRA adapters (peft keeps them fp32) and fp32 master weights train in fp32: no separate master copy.
    trainable_width = 4 if recipe.method.kind == "lora" or master_in_weights else width
    gradients = trainable * trainable_width / (processes if stage >= 2 else 1)
    # Adam: first and second moments, plus an fp32 master copy when the trained weights are 16-bit.
    adam_bytes = 8 + (4 if trainable_width < 4 else 0)
    on_device = 0 if offloaded(ds_config, "optimizer") else 1
    optimizer = trainable * adam_bytes / (processes if stage >= 1 else 1) * on_device
    text = config.get_text_config()  # a multimodal model's text part: what trains on the data
    activations = _activation_bytes(text, recipe, width)
    loss = resolve_loss(recipe.train.loss, config.model_type, stage)
    logits = logits_bytes(text, recipe, width, loss)
    parts = {
        "weights": weights,
        "gradients": gradients,
        "optimizer": optimizer,
        "activations": activations,
        f"logits ({loss} loss)": logits,
    }
    estimate = {name: value / GIB for name, value in parts.items()}
    estimate["total"] = sum(estimate.values()) * 1.1  # allocator fragmentation and CUDA context
    if loss != "plain":
        estimate["saved against full logits"] = (logits_bytes(text, recipe, width, "plain") - logits) / GIB
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
