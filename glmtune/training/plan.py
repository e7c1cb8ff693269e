"""What `glmtune train` checks before it writes anything, and what `--dry-run` prints instead of training.

`check_precision`, `check_plan` and `check_resumable` refuse what cannot work (fp16 on a family that overflows, LoRA
targets that match nothing, a plan over the GPU's memory, a resume with another recipe); `show_plan` prints the
resolved recipe, the launcher, the DeepSpeed config, the memory estimate and the data counts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from glmtune.checkpoints.load import Base
from glmtune.console import term
from glmtune.data.prepare import data_fingerprint, prepare_data, report_prepared
from glmtune.errors import UsageError
from glmtune.families import Family
from glmtune.recipe import Recipe
from glmtune.rundir import read_run, run_dir_of, run_recipe
from glmtune.training.callbacks import latest_complete_checkpoint
from glmtune.training.launch import estimate_memory, has_cuda, refuse_impossible, zero_stage
from glmtune.training.loss import resolve_loss
from glmtune.training.method import apply_method, count_parameters
from glmtune.training.trackers import check_trackers


def check_precision(recipe: Recipe, family: Family) -> None:
    if recipe.model.dtype == "float16" and not family.fp16_safe and not recipe.launch.allow_fp16:
        raise UsageError(
            f"model.dtype: float16 overflows on {family.name} models (the loss turns NaN); use bfloat16 or float32, "
            "or set launch.allow_fp16 = true to force it"
        )


def check_plan(recipe: Recipe, base: Base) -> None:
    """LoRA targets and, where there is GPU memory to plan for, the memory estimate: before anything is written."""
    check_trackers(recipe.train.report_to)
    use_packing(recipe, base.family)
    model = apply_method(base.meta_model(), recipe, base.family, quiet=True)
    if has_cuda() or recipe.launch.gpu_memory_gb:
        trainable, total = count_parameters(model, trainable=True), count_parameters(model)
        refuse_impossible(estimate_memory(model, recipe, trainable, total), recipe)


def use_packing(recipe: Recipe, family: Family) -> bool:
    """`train.packing` resolved: auto packs where the family can and length grouping was not asked for."""
    packing, grouped = recipe.train.packing, recipe.train.group_by_length
    if packing is True and family.cannot_pack:
        raise UsageError(
            f"train.packing: {family.title} cannot pack samples: {family.cannot_pack}; set train.packing = false"
        )
    if packing is True and grouped:
        raise UsageError(
            "train.packing and train.group_by_length: packed rows have no lengths to group; pick one"
        )
    return packing is True or (packing == "auto" and not grouped and not family.cannot_pack)


def check_resumable(run_dir: Path, recipe: Recipe, base: Base) -> None:
    """A resume continues the same run: the recipe and the data must be the ones the run directory recorded."""
    if not (run_dir / "recipe.toml").is_file():
        raise UsageError(f"{run_dir}: no run to resume here; start it without --resume")
    recorded, given = _flatten(run_recipe(run_dir).to_dict()), _flatten(recipe.to_dict())
    changed = sorted(key for key in recorded.keys() | given.keys() if recorded.get(key) != given.get(key))
    if changed:
        raise UsageError(
            f"{run_dir}: --resume needs the recipe the run started with; changed: {', '.join(changed)}"
        )
    started_on = read_run(run_dir).get("data_fingerprint")
    if started_on and data_fingerprint(recipe.data, base.family, base.tokenizer) != started_on:
        raise UsageError(
            f"{run_dir}: the training data changed since this run started; --resume continues on the same data: "
            "restore it, or start a new run (another run.name, or --overwrite)"
        )
    checkpoint, _ = latest_complete_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise UsageError(
            f"{run_dir}: no complete checkpoint to resume from; start the run again without --resume"
        )


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def show_plan(recipe: Recipe, base: Base, launch) -> None:
    """Print the resolved recipe, launcher, DeepSpeed config, memory estimate and data counts; write nothing."""
    import json

    import tomli_w

    term.out(tomli_w.dumps(recipe.to_dict()))
    with tempfile.TemporaryDirectory() as scratch:
        prepared = prepare_data(recipe.data, base.family, base.tokenizer, Path(scratch) / "data")
    model = apply_method(base.meta_model(), recipe, base.family)
    trainable, total = count_parameters(model, trainable=True), count_parameters(model)
    term.table("plan", ["", "value"], _plan_rows(recipe, base, launch, model, trainable, total))
    if launch.deepspeed:
        term.info("DeepSpeed config ('auto' values are filled in from [train]):")
        term.out(json.dumps(launch.deepspeed, indent=2))
    estimate = estimate_memory(model, recipe, trainable, total)
    term.table(
        "memory estimate per GPU (GiB)", ["part", "GiB"], [[k, f"{v:.2f}"] for k, v in estimate.items()]
    )
    refuse_impossible(estimate, recipe)
    report_prepared(prepared, "data")


def _plan_rows(recipe: Recipe, base: Base, launch, model, trainable: int, total: int) -> list[list[str]]:
    command = " ".join(launch.command) if launch.command else "(this process)"
    env = " ".join(f"{k}={v}" for k, v in launch.env.items()) or "(unchanged)"
    return [
        ["model", str(base.path)],
        ["family", base.family.title],
        ["architecture", model.config.model_type],
        ["method", recipe.method.kind],
        ["quantize", recipe.launch.quantize],
        [
            "batches",
            "packed rows (isolated samples)" if use_packing(recipe, base.family) else "padded per batch",
        ],
        ["loss", resolve_loss(recipe.train.loss, model.config.model_type, zero_stage(launch.deepspeed))],
        ["trainable parameters", f"{trainable:,}"],
        ["total parameters", f"{total:,}"],
        ["launcher", command],
        ["environment", env],
        ["run directory", str(run_dir_of(recipe))],
    ]
