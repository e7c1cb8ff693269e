"""`make bench`: the four ways of batching measured side by side, never asserted in tests.

One random GLM-4 (4 layers, hidden 256: the issue's benchmark shape at half the width, see SHAPE), LoRA r 8 on q/k/v/o, batch 4, gradient checkpointing, the bundled context/target extraction set read
several times over. Modes, all through the same Trainer: `fixed` (every sample padded to max_length, the seed
project's way), `dynamic` (padded to each batch's longest), `grouped` (dynamic with length-grouped batches), `packed`
(train.packing: samples share rows, isolated). Modes run interleaved, REPEATS times each after one warm-up run, and
report min/median/max of the training-loop seconds and tokens/s: computed (positions the model ran), trained
(non-padding) and supervised (tokens with a loss), the padding share and the peak RSS of each run.
Writes runs/bench/bench.json: {"modes": {mode: {...medians, "runs": [...]}}, "data", "machine", "versions"}.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from glmtune.console import term

MODES = ("fixed", "dynamic", "grouped", "packed")
STEPS = 3
REPEATS = 3
BATCH = 4
MAX_LENGTH = 1024  # fixed pads to it; the tiny tokenizer gives ~2x GLM-4's token counts
COPIES = 12  # 68 records x 12: enough batches for length grouping's mega-batches and for full packed rows
# hidden 256 x 4 layers (~4M parameters): the hidden-512 model costs ~4x more per token, too slow for a
# few-minute run on this shared 2-core machine
SHAPE = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 768,
}
DATA = Path(__file__).resolve().parents[1] / "data" / "extraction" / "train.jsonl"


def main() -> None:
    from glmtune.console import quiet_libraries

    quiet_libraries()
    loads = [os.getloadavg()]
    setup = _setup()
    _run(setup, "dynamic")  # warm-up: first-call costs (allocator, kernels) would otherwise land on one mode
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(REPEATS):
        for mode in MODES:
            runs[mode].append(_run(setup, mode))
    loads.append(os.getloadavg())
    report = {
        "modes": {mode: _summary(results) for mode, results in runs.items()},
        "data": setup["data"],
        "machine": _machine(loads),
        "versions": _versions(),
    }
    report["targets"] = _targets(report["modes"])
    _show(report)
    out = Path("runs") / "bench" / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    term.ok(f"wrote {out}")


def _setup() -> dict[str, Any]:
    import tempfile

    from glmtune.checkpoints.load import open_base
    from glmtune.data.prepare import prepare_data
    from glmtune.recipe_files import recipe_from_dict

    mixed = {"train": [str(DATA)], "mix": {DATA.stem: {"weight": COPIES}}, "max_length": MAX_LENGTH}
    recipe = recipe_from_dict({"model": {"path": "builtin:tiny-glm4"}, "data": mixed}, where="bench")
    opened = open_base(recipe.model)
    base, family, tokenizer, data = opened.path, opened.family, opened.tokenizer, recipe.data
    with tempfile.TemporaryDirectory() as scratch:
        prepared = prepare_data(data, family, tokenizer, Path(scratch) / "data")
        train = prepared.splits["train"].flatten_indices()  # in memory: the scratch folder goes away
    stats = prepared.stats["train"]
    described = {
        "file": DATA.name,
        "copies": COPIES,
        "samples": stats["samples"],
        "tokens": stats["tokens"],
        "supervised_tokens": stats["supervised_tokens"],
        "length_p50": stats["length_p50"],
        "length_max": stats["length_max"],
        "max_length": MAX_LENGTH,
        "batch_size": BATCH,
        "steps": STEPS,
        "repeats": REPEATS,
        "model": SHAPE,
        "lora": "r 8 on q/k/v/o",
    }
    return {"base": base, "family": family, "tokenizer": tokenizer, "train": train, "data": described}


def _model(base: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    config.update(SHAPE)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _run(setup: dict[str, Any], mode: str) -> dict[str, Any]:
    import tempfile

    from transformers import PrinterCallback, Trainer

    from glmtune.training.loss import HeadLoss
    from glmtune.training.method import apply_method
    from glmtune.training.train import batching, collator, training_arguments

    recipe = _recipe(mode)
    model = apply_method(_model(setup["base"]), recipe, setup["family"], quiet=True)
    plan = batching(recipe, setup["family"], setup["tokenizer"], model)
    if mode == "fixed":
        plan.collator = collator(setup["tokenizer"], MAX_LENGTH)
    counter = _TokenCounter(plan.collator)
    with tempfile.TemporaryDirectory() as scratch:
        args = training_arguments(recipe, Path(scratch) / "checkpoints", has_eval=False)
        args.save_strategy = "no"
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=plan.split(setup["train"]),
            data_collator=counter,
            compute_loss_func=None if plan.loss == "plain" else HeadLoss(model, plan.loss),
        )
        trainer.remove_callback(PrinterCallback)
        _reset_peak_rss()
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    return counter.rates(seconds) | {"peak_rss_mb": _peak_rss_mb(), "loss": plan.loss}


def _recipe(mode: str):
    """The LoRA recipe every mode trains with; the mode only switches length grouping or packing."""
    from glmtune.recipe_files import recipe_from_dict

    train = {"max_steps": STEPS, "batch_size": BATCH, "logging_steps": STEPS, "gradient_checkpointing": True}
    return recipe_from_dict(
        {
            "model": {"path": "builtin:tiny-glm4", "dtype": "float32"},
            "data": {"max_length": MAX_LENGTH},
            "lora": {"targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.0},
            "train": train | {"group_by_length": mode == "grouped", "packing": mode == "packed"},
        },
        where="bench",
    )


class _TokenCounter:
    """Wraps a collator and counts positions computed, real (non-padding) tokens and supervised tokens."""

    def __init__(self, collator) -> None:
        self.collator, self.computed, self.trained, self.supervised = collator, 0, 0, 0

    def __call__(self, rows):
        batch = self.collator(rows)
        self.computed += batch["input_ids"].numel()
        self.trained += sum(len(row["input_ids"]) for row in rows)
        self.supervised += int((batch["labels"][..., 1:] != -100).sum())
        return batch

    def rates(self, seconds: float) -> dict[str, float]:
        return {
            "train_s": seconds,
            "computed_tokens_per_s": self.computed / seconds,
            "trained_tokens_per_s": self.trained / seconds,
            "supervised_tokens_per_s": self.supervised / seconds,
            "pad_share": 1 - self.trained / max(self.computed, 1),
        }


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, so each run reports its own peak
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "trained_tokens_per_s",
        "computed_tokens_per_s",
        "supervised_tokens_per_s",
        "pad_share",
        "peak_rss_mb",
        "train_s",
    )
    summary: dict[str, Any] = {key: statistics.median(r[key] for r in results) for key in keys}
    summary |= {f"{key}_min_median_max": _spread([r[key] for r in results]) for key in keys}
    return summary | {"loss": results[0]["loss"], "runs": results}


def _spread(values: list[float]) -> list[float]:
    return [min(values), statistics.median(values), max(values)]


def _targets(modes: dict[str, dict[str, Any]]) -> dict[str, float]:
    packed, dynamic = modes["packed"], modes["dynamic"]
    return {
        "packed_pad_share": packed["pad_share"],  # target <= 0.02
        # target >= 0.9: isolation costs at most 10 % of the compute rate
        "packed_trained_over_dynamic_computed": packed["trained_tokens_per_s"]
        / dynamic["computed_tokens_per_s"],
        "packed_trained_over_dynamic_trained": packed["trained_tokens_per_s"]
        / dynamic["trained_tokens_per_s"],
    }


def _machine(loads: list[tuple[float, float, float]]) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "load_1m_before_after": [loads[0][0], loads[-1][0]],
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    from glmtune import __version__

    packages = ("torch", "transformers", "peft", "datasets")
    return {"python": platform.python_version(), "glmtune": __version__} | {p: version(p) for p in packages}


def _show(report: dict[str, Any]) -> None:
    columns = {  # header: (report key, format)
        "train s": ("train_s", "{:.1f}"),
        "computed tok/s": ("computed_tokens_per_s", "{:,.0f}"),
        "trained tok/s": ("trained_tokens_per_s", "{:,.0f}"),
        "supervised tok/s": ("supervised_tokens_per_s", "{:,.0f}"),
        "padding": ("pad_share", "{:.1%}"),
        "peak RSS MB": ("peak_rss_mb", "{:,.0f}"),
    }
    rows = [
        [mode, *(shown.format(r[key]) for key, shown in columns.values())]
        for mode, r in report["modes"].items()
    ]
    title = f"{STEPS} LoRA steps x {REPEATS} (medians), GLM-4 hidden 256 x 4 layers, batch {BATCH}"
    term.table(title, ["mode", *columns], rows)
    term.table("targets", ["ratio", "value"], [[k, f"{v:.3f}"] for k, v in report["targets"].items()])


if __name__ == "__main__":
    main()
