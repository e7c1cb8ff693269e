"""`make bench`: speed targets measured, never asserted in tests.

Trains the builtin tiny GLM-4 for a fixed number of steps on the bundled multi-turn data three ways — padded to the
longest sample of each batch (glmtune's default), the same with length-grouped batches, and padded to a fixed
max_length (what many GLM fine-tuning scripts do) — and reports wall time, tokens/s, and the share of padding.
Writes runs/bench.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from glmtune.console import term

STEPS = 30
MAX_LENGTH = 512
# The multi-turn set read several times over: transformers groups lengths within mega-batches of up to 50 batches,
# and only once the data holds at least 4 batches' worth (25 dialogues alone would leave nothing to group).
COPIES = 8


def main() -> None:
    from glmtune.console import quiet_libraries

    quiet_libraries()
    _run("dynamic")  # warm-up: first-call costs (allocator, kernels) would otherwise land on the first mode
    results = {name: _run(name) for name in ("dynamic", "dynamic+group_by_length", "fixed max_length")}
    rows = [[name, f"{r['seconds']:.1f}", f"{r['real_tokens_per_s']:,.0f}", f"{r['padding_share']:.0%}"]
            for name, r in results.items()]  # fmt: skip
    term.table(f"{STEPS} LoRA steps, tiny GLM-4, batch 8, max_length {MAX_LENGTH}",
               ["padding", "seconds", "real tokens/s", "padding share"], rows)  # fmt: skip
    out = Path("runs") / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    term.ok(f"wrote {out}")


def _run(mode: str) -> dict[str, float]:
    import tempfile

    from transformers import PrinterCallback, Trainer

    from glmtune.checkpoints.load import open_base
    from glmtune.data.prepare import prepare_data
    from glmtune.recipe import recipe_from_dict
    from glmtune.training.method import apply_method
    from glmtune.training.train import collator, training_arguments

    root = Path(__file__).resolve().parents[1]
    recipe = recipe_from_dict({
        "model": {"path": "builtin:tiny-glm4"},
        "data": {"train": [str(root / "data" / "multiturn.jsonl")] * COPIES, "max_length": MAX_LENGTH},
        "train": {"max_steps": STEPS, "batch_size": 8, "logging_steps": STEPS, "group_by_length": "group" in mode},
    }, where="bench")  # fmt: skip
    base = open_base(recipe.model)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = prepare_data(recipe.data, base.family, base.tokenizer, Path(scratch) / "data")
        model = apply_method(base.load_model(), recipe, base.family, quiet=True)
        counter = _PaddingCounter(collator(base.tokenizer, MAX_LENGTH if mode.startswith("fixed") else None))
        args = training_arguments(recipe, Path(scratch) / "checkpoints", has_eval=False)
        args.save_strategy = "no"
        trainer = Trainer(
            model=model, args=args, train_dataset=prepared.splits["train"], data_collator=counter
        )
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "real_tokens_per_s": counter.real / seconds,
            "padding_share": 1 - counter.real / max(counter.total, 1)}  # fmt: skip


class _PaddingCounter:
    """Wraps a collator and counts real and padded token positions."""

    def __init__(self, collator) -> None:
        self.collator, self.real, self.total = collator, 0, 0

    def __call__(self, rows):
        batch = self.collator(rows)
        self.real += int(batch["attention_mask"].sum())
        self.total += batch["attention_mask"].numel()
        return batch


if __name__ == "__main__":
    main()
