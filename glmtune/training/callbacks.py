"""Trainer callbacks that keep a run honest: metrics.jsonl, the loss curve, the NaN watchdog, complete checkpoints.

All of them write on the main process only. Checkpoint rotation is glmtune's, not the Trainer's: the Trainer deletes
old checkpoints before the new one is marked complete, so a kill in between (save_total_limit = 1) would leave none
to resume from; `CheckpointMarker` deletes them only after the marker of a newer one is written, and never marks a
checkpoint whose weights are not finite.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from transformers import TrainerCallback

from glmtune.errors import UsageError
from glmtune.rundir import atomic_write_text

COMPLETE_MARKER = "glmtune-complete"  # written into a checkpoint folder after everything else in it


class TrainingDiverged(UsageError):
    """The loss became NaN or infinite."""


class MetricsLog(TrainerCallback):
    """Appends every Trainer log entry to metrics.jsonl with its step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if not state.global_step or not self.path.is_file():
            self.path.unlink(missing_ok=True)
            return
        # Resumed: drop what an interrupted run logged after the checkpoint it resumes from.
        entries = _entries(self.path.read_text(encoding="utf-8", errors="replace"))
        kept = [entry for entry in entries if entry["step"] <= state.global_step]
        atomic_write_text(self.path, "".join(json.dumps(entry) + "\n" for entry in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


def _entries(text: str) -> list[dict]:
    """The readable entries of metrics.jsonl; a line torn by a kill (or any damaged one) is left out."""
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append(entry)
    return entries


class LossCurve(TrainerCallback):
    """loss.png (train and eval loss by step), redrawn on each evaluation and at the end; headless matplotlib."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_evaluate(self, args, state, control, **kwargs):
        self._draw(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._draw(state)

    def _draw(self, state) -> None:
        if not state.is_world_process_zero:
            return
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

        figure = Figure(figsize=(7, 4), dpi=100)
        axes = figure.add_subplot()
        for key, label in (("loss", "train"), ("eval_loss", "eval")):
            points = [(entry["step"], entry[key]) for entry in state.log_history if key in entry]
            if points:
                axes.plot(*zip(*points, strict=True), marker="o" if key == "eval_loss" else None, label=label)
        axes.set(xlabel="step", ylabel="loss", title="loss")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
        temporary = self.path.with_name(f".{self.path.name}.tmp.png")
        figure.savefig(temporary)
        os.replace(temporary, self.path)


class NanWatchdog(TrainerCallback):
    """Stops the run at the first NaN/inf loss with the step and what to try. It needs the Trainer's
    `logging_nan_inf_filter` off: the filter replaces a NaN loss by the running mean before it is logged."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise diverged(args, state, f"the training loss became {loss}")


def diverged(args, state, what: str) -> TrainingDiverged:
    precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    kept, _ = latest_complete_checkpoint(Path(args.output_dir))
    return TrainingDiverged(
        f"{what} at step {state.global_step} ({precision}); the run stopped"
        f"{f', {kept.name} is the last good checkpoint' if kept else ''}; lower train.learning_rate, raise "
        "train.warmup_ratio, or train in bf16/fp32 rather than fp16, and start the run again with --overwrite"
    )


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete once the Trainer finished writing it, so resume never picks a torn one; then,
    and only then, deletes the older checkpoints beyond `keep` (the best one, with keep_best, stays)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def on_save(self, args, state, control, model=None, **kwargs):
        import torch.distributed as dist

        if model is not None and not _weights_finite(model):
            raise diverged(args, state, "the weights became NaN/inf")
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its part (its RNG state) of the checkpoint
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            temporary = folder / f".{COMPLETE_MARKER}.tmp"
            temporary.write_text(str(state.global_step))
            os.replace(temporary, folder / COMPLETE_MARKER)
            rotate_checkpoints(folder.parent, self.keep, state.best_model_checkpoint)


def _weights_finite(model) -> bool:
    """The trainable weights (what training changes) hold no NaN/inf; ZeRO-3 shards show as empty and pass."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad and p.numel())


def rotate_checkpoints(folder: Path, keep: int, best: str | None = None) -> None:
    """Delete checkpoints older than the newest `keep` complete ones; the best one and newer ones stay."""
    numbered = [p for p in folder.glob("checkpoint-*") if p.name.removeprefix("checkpoint-").isdigit()]
    ordered = sorted(numbered, key=lambda p: int(p.name.removeprefix("checkpoint-")), reverse=True)
    complete = [p for p in ordered if (p / COMPLETE_MARKER).is_file()]
    if len(complete) <= keep:
        return
    oldest_kept = complete[keep - 1]
    for checkpoint in ordered[ordered.index(oldest_kept) + 1 :]:
        if best is None or Path(best).resolve() != checkpoint.resolve():
            shutil.rmtree(checkpoint, ignore_errors=True)


def latest_complete_checkpoint(folder: Path) -> tuple[Path | None, list[Path]]:
    """The newest checkpoint that has the completion marker, and the incomplete ones that were skipped."""
    numbered = [p for p in folder.glob("checkpoint-*") if p.name.removeprefix("checkpoint-").isdigit()]
    checkpoints = sorted(numbered, key=lambda p: int(p.name.removeprefix("checkpoint-")), reverse=True)
    skipped: list[Path] = []
    for checkpoint in checkpoints:
        if (checkpoint / COMPLETE_MARKER).is_file():
            return checkpoint, skipped
        skipped.append(checkpoint)
    return None, skipped
