"""`glmtune train`: LoRA or full fine-tuning through transformers' Trainer, into a self-describing run directory.

Reads top to bottom: `train` sets the run up (model, tokenizer, family, prepared data), `fit` runs the Trainer,
`save_outputs` writes the weights, tokenizer and a final run.json. `--dry-run` stops after the plan.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from glmtune.console import progress_callback, term
from glmtune.errors import UsageError
from glmtune.families import Family
from glmtune.modeling import (
    family_for,
    load_model,
    load_tokenizer,
    lora_target_modules,
    quiet_libraries,
    resolve_model_path,
)
from glmtune.prepare import Prepared, prepare_data, stats_rows
from glmtune.recipe import Recipe
from glmtune.rundir import new_run_info, run_dir_of, staged_dir, update_run, write_recipe, write_run


def train(recipe: Recipe, *, dry_run: bool = False) -> Path:
    quiet_libraries()
    run_dir = run_dir_of(recipe)
    base = resolve_model_path(recipe.model.path)
    family = family_for(base, recipe.model.family)
    tokenizer = load_tokenizer(base, recipe.model.trust_remote_code)
    if dry_run:
        _show_plan(recipe, base, family, tokenizer)
        return run_dir

    write_recipe(run_dir, recipe)
    write_run(run_dir, new_run_info(recipe, family.name, base) | _loading_flags(recipe))
    prepared = prepare_data(recipe.data, family, tokenizer, run_dir / "data")
    term.table("data", *stats_rows(prepared.stats))
    model = load_model(
        base,
        dtype=recipe.model.dtype,
        trust_remote_code=recipe.model.trust_remote_code,
        allow_pickle=recipe.model.allow_pickle,
    )
    model = apply_method(model, recipe, family)
    update_run(run_dir, status="training")
    trainer = fit(model, tokenizer, prepared, recipe, run_dir)
    save_outputs(trainer, tokenizer, recipe, run_dir)
    return run_dir


def _loading_flags(recipe: Recipe) -> dict[str, Any]:
    return {"allow_pickle": recipe.model.allow_pickle, "trust_remote_code": recipe.model.trust_remote_code}


def apply_method(model, recipe: Recipe, family: Family):
    """Wrap the model for the recipe's method and report what will train."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(recipe.run.seed)  # LoRA's initialisation is part of the run's reproducibility
    if recipe.method.kind == "full":
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
    term.step(
        f"LoRA r={recipe.lora.r} on {', '.join(targets)} ({wrapped} modules): "
        f"{_count(model, trainable=True):,} of {_count(model):,} parameters train"
    )
    return model


def _count(model, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def training_arguments(recipe: Recipe, output_dir: Path, has_eval: bool):
    import torch
    from transformers import TrainingArguments

    t = recipe.train
    eval_strategy = "no" if not has_eval else ("steps" if t.eval_steps else "epoch")
    save_strategy = "steps" if t.save_steps else "epoch"
    if t.keep_best and eval_strategy == "no":
        raise UsageError("train.keep_best needs an eval split: set data.eval")
    if t.keep_best and eval_strategy != save_strategy:
        raise UsageError("train.keep_best needs train.save_steps equal to train.eval_steps (or neither set)")
    dtype = _resolved_dtype(recipe)
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
        use_cpu=not torch.cuda.is_available(),
        seed=recipe.run.seed,
        data_seed=recipe.run.seed,
        report_to=[],
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )


def _resolved_dtype(recipe: Recipe) -> str:
    from glmtune.modeling import torch_dtype

    return str(torch_dtype(recipe.model.dtype)).removeprefix("torch.")


def fit(model, tokenizer, prepared: Prepared, recipe: Recipe, run_dir: Path):
    """Run the Trainer; batches are padded to their longest sample (labels with -100), on the right."""
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer

    eval_split = prepared.splits.get("eval")
    args = training_arguments(recipe, run_dir / "checkpoints", has_eval=eval_split is not None)
    collator = DataCollatorForSeq2Seq(
        tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt"
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=prepared.splits["train"],
        eval_dataset=eval_split,
        data_collator=collator,
        callbacks=[progress_callback(), MetricsLog(run_dir / "metrics.jsonl")],
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw dicts to stdout; our progress bar shows the same
    trainer.train()
    return trainer


def save_outputs(trainer, tokenizer, recipe: Recipe, run_dir: Path) -> None:
    weights = "adapter" if recipe.method.kind == "lora" else "model"
    with staged_dir(run_dir / weights) as staging:
        trainer.save_model(str(staging))
    with staged_dir(run_dir / "tokenizer") as staging:
        tokenizer.save_pretrained(staging)
    history = [entry for entry in trainer.state.log_history if "loss" in entry or "eval_loss" in entry]
    summary = _summary(history, trainer.state)
    update_run(run_dir, status="complete", weights=weights, summary=summary)
    term.table("run summary", ["", "value"], summary.items())
    term.ok(f"run saved to {run_dir}")


def _summary(history: list[dict[str, Any]], state) -> dict[str, Any]:
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


def _metrics_log_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MetricsLog(_metrics_log_base()):  # type: ignore[misc]
    """Appends every Trainer log entry to metrics.jsonl with its step (rank 0 only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.path.unlink(missing_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


def _show_plan(recipe: Recipe, base: Path, family: Family, tokenizer) -> None:
    """Print the resolved recipe and the plan without writing anything."""
    import tomli_w

    term.out(tomli_w.dumps(recipe.to_dict()))
    with tempfile.TemporaryDirectory() as scratch:
        prepared = prepare_data(recipe.data, family, tokenizer, Path(scratch) / "data")
        rows = stats_rows(prepared.stats)
    model = _meta_model(base, recipe)
    model = apply_method(model, recipe, family)
    term.table(
        "plan",
        ["", "value"],
        [
            ["model", str(base)],
            ["family", family.title],
            ["architecture", model.config.model_type],
            ["method", recipe.method.kind],
            ["trainable parameters", f"{_count(model, trainable=True):,}"],
            ["total parameters", f"{_count(model):,}"],
            ["run directory", str(run_dir_of(recipe))],
        ],
    )
    term.table("data", *rows)


def _meta_model(base: Path, recipe: Recipe):
    """The architecture without weights (meta device): counting parameters of a 9B model costs nothing."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base, trust_remote_code=recipe.model.trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
