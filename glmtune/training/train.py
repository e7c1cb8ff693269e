"""`glmtune train`: LoRA or full fine-tuning through transformers' Trainer, into a self-describing run directory.

Reads top to bottom: `train` checks the plan and sets the run directory up (resolved recipe, run.json, prepared
data), then trains here or re-executes itself as DeepSpeed workers; `train_here` (run by every worker) builds the
Trainer, `fit` runs it, `save_outputs` writes weights, tokenizer and the final run.json. `--dry-run` stops after
printing the plan.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from glmtune.checkpoints.load import (
    family_for,
    load_model,
    load_tokenizer,
    lora_target_modules,
    quiet_libraries,
    resolve_model_path,
    torch_dtype,
)
from glmtune.console import progress_callback, term
from glmtune.data.prepare import IGNORE_INDEX, Prepared, prepare_data, report_prepared
from glmtune.errors import UsageError
from glmtune.families import Family
from glmtune.recipe import Recipe
from glmtune.rundir import (
    new_run_info,
    replace_dir,
    run_dir_of,
    staged_dir,
    update_run,
    write_recipe,
    write_run,
)
from glmtune.training.callbacks import (
    CheckpointMarker,
    LossCurve,
    MetricsLog,
    NanWatchdog,
    latest_complete_checkpoint,
)
from glmtune.training.launch import (
    deepspeed_config,
    estimate_memory,
    has_cuda,
    init_distributed,
    plan_launch,
    refuse_impossible,
    run_workers,
)
from glmtune.training.trackers import check_trackers, tracker_environment


def train(recipe: Recipe, *, dry_run: bool = False, resume: bool = False) -> Path:
    quiet_libraries()
    run_dir = run_dir_of(recipe)
    base = resolve_model_path(recipe.model.path)
    family = family_for(base, recipe.model.family)
    tokenizer = load_tokenizer(base, recipe.model.trust_remote_code, family)
    check_precision(recipe, family)
    launch = plan_launch(recipe, run_dir, resume)
    if dry_run:
        show_plan(recipe, base, family, tokenizer, launch)
        return run_dir
    check_plan(recipe, base, family)
    if resume:
        check_resumable(run_dir, recipe)
    prepared = _prepare_into(run_dir, recipe, family, tokenizer)
    if not resume:
        write_recipe(run_dir, recipe)
        write_run(run_dir, new_run_info(recipe, family.name, base) | _loading_flags(recipe))
    if launch.command:
        workers = recipe.launch.processes_per_node * recipe.launch.nodes
        term.step(f"launching {workers} DeepSpeed workers ({recipe.launch.zero})")
        run_workers(launch)
    else:
        train_here(recipe, run_dir, resume, prepared)
    return run_dir


def _prepare_into(run_dir: Path, recipe: Recipe, family: Family, tokenizer) -> Prepared:
    """Prepare the data before anything else is written; a data error leaves no new run folder behind."""
    created = not run_dir.exists()
    try:
        prepared = prepare_data(recipe.data, family, tokenizer, run_dir / "data")
    except UsageError:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    report_prepared(prepared, "data")
    return prepared


def check_precision(recipe: Recipe, family: Family) -> None:
    if recipe.model.dtype == "float16" and not family.fp16_safe and not recipe.launch.allow_fp16:
        raise UsageError(
            f"model.dtype: float16 overflows on {family.name} models (the loss turns NaN); use bfloat16 or float32, "
            "or set launch.allow_fp16 = true to force it"
        )


def check_plan(recipe: Recipe, base: Path, family: Family) -> None:
    """LoRA targets and, where there is GPU memory to plan for, the memory estimate: before anything is written."""
    check_trackers(recipe.train.report_to)
    model = apply_method(meta_model(base, recipe), recipe, family, quiet=True)
    if has_cuda() or recipe.launch.gpu_memory_gb:
        refuse_impossible(
            estimate_memory(model, recipe, _count(model, trainable=True), _count(model)), recipe
        )


def check_resumable(run_dir: Path, recipe: Recipe) -> None:
    """A resume continues the same run: the recipe must be the one the run directory recorded."""
    from glmtune.rundir import run_recipe

    if not (run_dir / "recipe.toml").is_file():
        raise UsageError(f"{run_dir}: no run to resume here; start it without --resume")
    recorded = _flatten(run_recipe(run_dir).to_dict())
    changed = sorted(k for k in recorded.keys() | _flatten(recipe.to_dict()).keys()
                     if recorded.get(k) != _flatten(recipe.to_dict()).get(k))  # fmt: skip
    if changed:
        raise UsageError(
            f"{run_dir}: --resume needs the recipe the run started with; changed: {', '.join(changed)}"
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


def _loading_flags(recipe: Recipe) -> dict[str, Any]:
    return {"allow_pickle": recipe.model.allow_pickle, "trust_remote_code": recipe.model.trust_remote_code}


def train_here(recipe: Recipe, run_dir: Path, resume: bool = False, prepared: Prepared | None = None) -> None:
    """Train in this process (single, or one DeepSpeed worker of several)."""
    from glmtune.training.quantize import prepare_for_kbit_training, quantization_config

    quiet_libraries()
    init_distributed(recipe)
    base = resolve_model_path(recipe.model.path)
    family = family_for(base, recipe.model.family)
    tokenizer = load_tokenizer(base, recipe.model.trust_remote_code, family)
    if prepared is None:  # a DeepSpeed worker: the launching process prepared it, this only loads it
        prepared = prepare_data(recipe.data, family, tokenizer, run_dir / "data")
    tracker_environment(recipe.train.report_to, run_dir)
    # TrainingArguments come first: with ZeRO-3 they make from_pretrained build the model already partitioned.
    args = training_arguments(recipe, run_dir / "checkpoints", has_eval="eval" in prepared.splits)
    model = load_model(
        base,
        dtype=_weights_dtype(recipe),
        trust_remote_code=recipe.model.trust_remote_code,
        allow_pickle=recipe.model.allow_pickle,
        quantization_config=quantization_config(recipe.launch.quantize, torch_dtype(recipe.model.dtype)),
        family=family,
    )
    if recipe.launch.quantize != "none":
        model = prepare_for_kbit_training(model, recipe.train.gradient_checkpointing)
    model = apply_method(model, recipe, family)
    if args.process_index == 0:
        update_run(run_dir, status="training")
    trainer = fit(model, tokenizer, prepared, args, run_dir, resume)
    save_outputs(trainer, tokenizer, recipe, run_dir, prepared)


def _weights_dtype(recipe: Recipe) -> str:
    # Full fine-tuning in bf16/fp16 keeps fp32 master weights (the Trainer autocasts the compute): updates of a
    # small learning rate would round away in 16-bit weights. LoRA trains fp32 adapters on a 16-bit base.
    if recipe.method.kind == "full" and recipe.launch.strategy == "single":
        return "float32"
    return recipe.model.dtype


def apply_method(model, recipe: Recipe, family: Family, quiet: bool = False):
    """Wrap the model for the recipe's method and report what will train."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(recipe.run.seed)  # LoRA's initialisation is part of the run's reproducibility
    if recipe.method.kind == "full":
        if not quiet:
            term.step(f"full fine-tuning: {_count(model, trainable=True):,} trainable parameters")
        return model
    targets = lora_target_modules(model, family, recipe.lora.targets)
    config = LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    wrapped = sum(1 for _, module in model.named_modules() if isinstance(module, LoraLayer))
    if not quiet:
        term.step(
            f"LoRA r={recipe.lora.r} on {', '.join(targets)} ({wrapped} modules): "
            f"{_count(model, trainable=True):,} of {_count(model):,} parameters train"
        )
    return model


def _count(model, trainable: bool = False) -> int:
    return sum(
        p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        for p in model.parameters()
        if p.requires_grad or not trainable
    )


def training_arguments(recipe: Recipe, output_dir: Path, has_eval: bool):
    from transformers import TrainingArguments

    t = recipe.train
    eval_strategy = "no" if not has_eval else ("steps" if t.eval_steps else "epoch")
    save_strategy = "steps" if t.save_steps else "epoch"
    dtype = str(torch_dtype(recipe.model.dtype)).removeprefix("torch.")
    ds_config = deepspeed_config(recipe)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy=save_strategy,
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=t.keep_best,
        metric_for_best_model="eval_loss" if t.keep_best else None,
        greater_is_better=False if t.keep_best else None,
        activation_checkpointing=t.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=not has_cuda() and ds_config is None,
        deepspeed=ds_config,
        accelerator_config={"use_configured_state": True} if ds_config else None,
        seed=recipe.run.seed,
        data_seed=recipe.run.seed,
        report_to=list(t.report_to),
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=has_cuda(),
    )


def collator(tokenizer, fixed_length: int | None = None):
    """Pads each batch to its longest sample (or to `fixed_length`), on the right; padded labels are ignored."""
    from transformers import DataCollatorForSeq2Seq

    padding = "max_length" if fixed_length else "longest"
    return DataCollatorForSeq2Seq(tokenizer, padding=padding, max_length=fixed_length,
                                  label_pad_token_id=IGNORE_INDEX, return_tensors="pt")  # fmt: skip


def fit(model, tokenizer, prepared: Prepared, args, run_dir: Path, resume: bool = False):
    """Run the Trainer with glmtune's callbacks; the progress bar is closed even when training fails."""
    from transformers import PrinterCallback, Trainer

    progress = progress_callback()
    callbacks = [progress, MetricsLog(run_dir / "metrics.jsonl"), LossCurve(run_dir / "loss.png"),
                 NanWatchdog(), CheckpointMarker()]  # fmt: skip
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=prepared.splits["train"],
        eval_dataset=prepared.splits.get("eval"),
        data_collator=collator(tokenizer),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw dicts to stdout; our progress bar shows the same
    try:
        trainer.train(resume_from_checkpoint=_resume_point(run_dir) if resume else None)
    finally:
        progress.close()
    return trainer


def _resume_point(run_dir: Path) -> str:
    checkpoint, skipped = latest_complete_checkpoint(run_dir / "checkpoints")
    for folder in skipped:
        term.warn(f"ignoring incomplete checkpoint {folder.name} (interrupted while it was written)")
    if checkpoint is None:
        raise UsageError(f"{run_dir}: no complete checkpoint to resume from")
    term.step(f"resuming from {checkpoint.name}")
    return str(checkpoint)


def save_outputs(trainer, tokenizer, recipe: Recipe, run_dir: Path, prepared: Prepared) -> None:
    """Every process takes part (ZeRO-3 gathers the weights); the main one writes and renames into place."""
    weights = "adapter" if recipe.method.kind == "lora" else "model"
    staging = run_dir / f".{weights}.partial"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)  # left over from a crashed save
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    probe = _final_logits(trainer, prepared)
    trainer.accelerator.wait_for_everyone()  # every rank has finished writing before the folder moves
    if not trainer.is_world_process_zero():
        return
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; recipe.toml already says all of it
    replace_dir(staging, run_dir / weights)
    with staged_dir(run_dir / "tokenizer") as folder:
        tokenizer.save_pretrained(folder)
    _save_probe(run_dir, probe)
    summary = _summary(trainer.state)
    update_run(run_dir, status="complete", weights=weights, summary=summary)
    term.table("run summary", ["", "value"], summary.items())
    term.ok(f"run saved to {run_dir}")


def _final_logits(trainer, prepared: Prepared):
    """Logits of the trained model on the first training sample, so a reload can be checked against training."""
    import torch

    ids = torch.tensor([prepared.splits["train"][0]["input_ids"]], device=trainer.args.device)
    model = trainer.model
    model.eval()
    with torch.no_grad():
        return ids.cpu(), model(input_ids=ids).logits.float().cpu()


def _save_probe(run_dir: Path, probe) -> None:
    from safetensors.torch import save_file

    ids, logits = probe
    target = run_dir / "final_logits.safetensors"
    temporary = target.with_name(f".{target.name}.tmp")
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()}, str(temporary))
    os.replace(temporary, target)


def _summary(state) -> dict[str, Any]:
    history = state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    summary: dict[str, Any] = {
        "steps": state.global_step,
        "epochs": round(state.epoch or 0, 2),
        "tokens_seen": int(state.num_input_tokens_seen),
    }
    if losses:
        summary |= {"first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4)}
    if evals:
        summary |= {"best_eval_loss": round(min(evals), 4), "best_eval_ppl": round(math.exp(min(evals)), 3)}
    if state.best_model_checkpoint:
        summary["best_checkpoint"] = Path(state.best_model_checkpoint).name
    return summary


def show_plan(recipe: Recipe, base: Path, family: Family, tokenizer, launch) -> None:
    """Print the resolved recipe, launcher, DeepSpeed config, memory estimate and data counts; write nothing."""
    import json

    import tomli_w

    term.out(tomli_w.dumps(recipe.to_dict()))
    with tempfile.TemporaryDirectory() as scratch:
        prepared = prepare_data(recipe.data, family, tokenizer, Path(scratch) / "data")
    model = apply_method(meta_model(base, recipe), recipe, family)
    trainable, total = _count(model, trainable=True), _count(model)
    command = " ".join(launch.command) if launch.command else "(this process)"
    env = " ".join(f"{k}={v}" for k, v in launch.env.items()) or "(unchanged)"
    term.table(
        "plan",
        ["", "value"],
        [
            ["model", str(base)],
            ["family", family.title],
            ["architecture", model.config.model_type],
            ["method", recipe.method.kind],
            ["quantize", recipe.launch.quantize],
            ["trainable parameters", f"{trainable:,}"],
            ["total parameters", f"{total:,}"],
            ["launcher", command],
            ["environment", env],
            ["run directory", str(run_dir_of(recipe))],
        ],
    )
    if launch.deepspeed:
        term.info("DeepSpeed config ('auto' values are filled in from [train]):")
        term.out(json.dumps(launch.deepspeed, indent=2))
    estimate = estimate_memory(model, recipe, trainable, total)
    term.table(
        "memory estimate per GPU (GiB)", ["part", "GiB"], [[k, f"{v:.2f}"] for k, v in estimate.items()]
    )
    refuse_impossible(estimate, recipe)
    report_prepared(prepared, "data")


def meta_model(base: Path, recipe: Recipe):
    """The architecture without weights (meta device): counting parameters of a 9B model costs nothing."""
    import torch
    from transformers import AutoModelForCausalLM

    from glmtune.checkpoints.load import family_for, load_config

    config = load_config(base, recipe.model.trust_remote_code, family_for(base, recipe.model.family))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
