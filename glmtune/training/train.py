"""`glmtune train` and `glmtune prepare`: LoRA or full fine-tuning through transformers' Trainer, into a
self-describing run directory.

Reads top to bottom: `train` opens the base once, checks the plan (`glmtune.training.plan`) and sets the run directory
up (resolved recipe, run.json, prepared data), then trains here or re-executes itself as DeepSpeed workers;
`train_here` (run by every worker) builds the Trainer, `fit` runs it, `save_outputs` writes weights, tokenizer and
the final run.json. `--dry-run` stops after printing the plan; `prepare_run` is the data step alone.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune.checkpoints.integrity import check_deepspeed_json
from glmtune.checkpoints.load import Base, open_base, torch_dtype
from glmtune.console import progress_callback, quiet_libraries, term
from glmtune.data.prepare import IGNORE_INDEX, Prepared, prepare_data, report_prepared
from glmtune.errors import UsageError
from glmtune.families import Family
from glmtune.recipe import Recipe, TrainSection
from glmtune.rundir import (
    claim_run_dir,
    new_run_info,
    replace_dir,
    run_attempt,
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
    backend_of,
    deepspeed_config,
    has_cuda,
    init_distributed,
    plan_launch,
    register_moe_leaves,
    run_workers,
    zero_stage,
)
from glmtune.training.method import apply_method
from glmtune.training.plan import check_plan, check_precision, check_resumable, show_plan, use_packing
from glmtune.training.trackers import tracker_callbacks, tracker_environment, trainer_integrations


def train(recipe: Recipe, *, dry_run: bool = False, resume: bool = False, overwrite: bool = False) -> Path:
    quiet_libraries()
    run_dir = run_dir_of(recipe)
    if not dry_run:
        claim_run_dir(run_dir, resume=resume, overwrite=overwrite)
    base = open_base(recipe.model)
    check_precision(recipe, base.family)
    check_deepspeed_json(recipe)
    launch = plan_launch(recipe, run_dir, resume)
    if dry_run:
        show_plan(recipe, base, launch)
        return run_dir
    check_plan(recipe, base)
    if resume:
        check_resumable(run_dir, recipe, base)
    with run_attempt(run_dir, replace=overwrite and not resume, keep_if=has_complete_checkpoint(run_dir)):
        prepared = prepare_data(recipe.data, base.family, base.tokenizer, run_dir / "data")
        report_prepared(prepared, "data")
        if not resume:
            write_recipe(run_dir, recipe)
            write_run(
                run_dir, new_run_info(recipe, base.family.name, base.path) | _data_fingerprint(prepared)
            )
        if launch.command:
            term.step(launch.announce)
            run_workers(launch)
        else:
            train_here(recipe, base, run_dir, resume, prepared)
    return run_dir


def has_complete_checkpoint(run_dir: Path):
    """For `run_attempt`: a failed run is kept (marked failed) once it has a checkpoint to resume from."""
    return lambda: latest_complete_checkpoint(run_dir / "checkpoints")[0] is not None


def _data_fingerprint(prepared: Prepared) -> dict[str, str]:
    """The data the run starts on; `--resume` refuses other data."""
    return {"data_fingerprint": (prepared.folder / "fingerprint.txt").read_text(encoding="utf-8").strip()}


def prepare_run(recipe: Recipe, show: int = 0) -> Prepared:
    """`glmtune prepare`: tokenize into the run's data folder, print stats and optionally N rendered samples."""
    from glmtune.data.render import show as render_markup

    quiet_libraries()
    run_dir = run_dir_of(recipe)
    claim_run_dir(run_dir, data_only=True)
    base = open_base(recipe.model)
    with run_attempt(run_dir, replace=False, keep_if=lambda: False):
        prepared = prepare_data(recipe.data, base.family, base.tokenizer, run_dir / "data")
    report_prepared(prepared, f"data {'reused' if prepared.reused else 'prepared'}")
    for index in range(min(show, len(prepared.splits["train"]))):
        row = prepared.splits["train"][index]
        mask = [label != IGNORE_INDEX for label in row["labels"]]
        title = f"[bold]sample {index}[/] ({len(row['input_ids'])} tokens, {sum(mask)} trained)"
        term.out(title, markup=True)
        term.out(render_markup(row["input_ids"], mask, base.tokenizer), markup=True)
    return prepared


def train_here(
    recipe: Recipe, base: Base, run_dir: Path, resume: bool = False, prepared: Prepared | None = None
) -> None:
    """Train in this process (single, or one DeepSpeed worker of several)."""
    from glmtune.training.quantize import prepare_for_kbit_training, quantization_config

    init_distributed(recipe)
    if prepared is None:  # a DeepSpeed worker: the launching process prepared it, this only loads it
        prepared = prepare_data(recipe.data, base.family, base.tokenizer, run_dir / "data")
    tracker_environment(recipe.train.report_to, run_dir)
    # TrainingArguments come first: with ZeRO-3 they make from_pretrained build the model already partitioned.
    args = training_arguments(recipe, run_dir / "checkpoints", has_eval="eval" in prepared.splits)
    quantization = quantization_config(recipe.launch.quantize, torch_dtype(recipe.model.dtype))
    model = base.load_model(dtype=_weights_dtype(recipe), quantization_config=quantization)
    if recipe.launch.quantize != "none":
        model = prepare_for_kbit_training(model, recipe.train.gradient_checkpointing)
    model = apply_method(model, recipe, base.family)
    leaves = register_moe_leaves(model, recipe)
    if leaves and args.process_index == 0:
        term.step(f"ZeRO-3 leaf modules (each gathered whole): {', '.join(leaves)}")
    if args.process_index == 0:
        update_run(run_dir, status="training")
    plan = batching(recipe, base.family, base.tokenizer, model)
    keep, trackers = recipe.train.save_total_limit, recipe.train.report_to
    trainer = fit(model, base.tokenizer, prepared, args, run_dir, resume, plan, keep, trackers)
    save_outputs(trainer, base.tokenizer, recipe, run_dir, prepared)


def _weights_dtype(recipe: Recipe) -> str:
    # Full fine-tuning in bf16/fp16 keeps fp32 master weights (the Trainer autocasts the compute): updates of a
    # small learning rate would round away in 16-bit weights. LoRA trains fp32 adapters on a 16-bit base.
    if recipe.method.kind == "full" and backend_of(recipe).fp32_weights_for_full:
        return "float32"
    return recipe.model.dtype


def training_arguments(recipe: Recipe, output_dir: Path, has_eval: bool):
    from transformers import TrainingArguments

    t = recipe.train
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
        logging_nan_inf_filter=False,  # the NaN watchdog must see the raw loss
        **_evaluating_and_saving(t, has_eval),
        activation_checkpointing=t.gradient_checkpointing,
        train_sampling_strategy="group_by_length"
        if t.group_by_length
        else "random",  # packing=true refuses it
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=not has_cuda() and ds_config is None,
        deepspeed=ds_config,
        accelerator_config={"use_configured_state": True} if ds_config else None,
        seed=recipe.run.seed,
        data_seed=recipe.run.seed,
        report_to=trainer_integrations(t.report_to),
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=has_cuda(),
    )


def _evaluating_and_saving(t: TrainSection, has_eval: bool) -> dict[str, Any]:
    """When the Trainer evaluates and saves checkpoints, and whether it reloads the best one at the end."""
    return {
        "eval_strategy": "no" if not has_eval else ("steps" if t.eval_steps else "epoch"),
        "eval_steps": t.eval_steps,
        "save_strategy": "steps" if t.save_steps else "epoch",
        "save_steps": t.save_steps or 500,
        "save_total_limit": None,  # CheckpointMarker rotates, once the newer checkpoint is complete
        "load_best_model_at_end": t.keep_best,
        "metric_for_best_model": "eval_loss" if t.keep_best else None,
        "greater_is_better": False if t.keep_best else None,
    }


def collator(tokenizer, fixed_length: int | None = None):
    """Pads each batch to its longest sample (or to `fixed_length`), on the right; padded labels are ignored."""
    from transformers import DataCollatorForSeq2Seq

    padding = "max_length" if fixed_length else "longest"
    return DataCollatorForSeq2Seq(
        tokenizer,
        padding=padding,
        max_length=fixed_length,
        label_pad_token_id=IGNORE_INDEX,
        return_tensors="pt",
    )


@dataclass
class Batching:
    """How the Trainer gets its batches and loss: packed rows or padded samples, and the loss over the head."""

    packed: bool
    max_length: int
    collator: Any
    loss: str  # plain, chunked or fused (glmtune.training.loss)

    def split(self, dataset):
        from glmtune.training.packing import pack_dataset

        return pack_dataset(dataset, self.max_length) if self.packed and dataset is not None else dataset


def batching(recipe: Recipe, family: Family, tokenizer, model) -> Batching:
    """Packed or padded batches and the loss; a packed sdpa model switches to sdpa per packed sample."""
    from glmtune.training.loss import resolve_loss
    from glmtune.training.packing import PackedCollator, use_packed_sdpa

    packed = use_packing(recipe, family)
    attention = str(getattr(model.config, "_attn_implementation", ""))
    if packed and attention == "sdpa":
        use_packed_sdpa(model)
    # Attention that runs per packed sample (flash varlen, glmtune's packed sdpa) takes the batch as one row, so no
    # position is spent on padding rows to the batch's longest; a block-diagonal mask (eager) would grow with the
    # square of the flattened row, so there the rows are padded.
    flatten = attention.startswith("flash") or (packed and attention == "sdpa")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    padded_or_packed = PackedCollator(pad_id, flatten=flatten) if packed else collator(tokenizer)
    loss = resolve_loss(recipe.train.loss, model.config.model_type, zero_stage(deepspeed_config(recipe)))
    return Batching(packed, recipe.data.max_length, padded_or_packed, loss)


def fit(
    model,
    tokenizer,
    prepared: Prepared,
    args,
    run_dir: Path,
    resume: bool = False,
    plan: Batching | None = None,
    keep_checkpoints: int = 2,
    trackers: Sequence[str] = (),
):
    """Run the Trainer with glmtune's callbacks; the progress bar is closed even when training fails."""
    from transformers import PrinterCallback, Trainer

    from glmtune.training.loss import HeadLoss

    plan = plan or Batching(False, 0, collator(tokenizer), "plain")
    progress = progress_callback()
    logs = [MetricsLog(run_dir / "metrics.jsonl"), LossCurve(run_dir / "loss.png")]
    callbacks = [progress, *logs, NanWatchdog(), CheckpointMarker(keep=keep_checkpoints)]
    callbacks += tracker_callbacks(trackers, run_dir) if args.process_index == 0 else []
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=plan.split(prepared.splits["train"]),
        eval_dataset=plan.split(prepared.splits.get("eval")),
        data_collator=plan.collator,
        callbacks=callbacks,
        compute_loss_func=None if plan.loss == "plain" else HeadLoss(model, plan.loss),
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
