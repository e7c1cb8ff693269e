"""`glmtune eval`: loss and perplexity on an eval split, and generation metrics on prompt/reference pairs.

For a LoRA run the untuned base is scored beside the tuned model (the adapter switched off on the same weights).
Results go to a rich table and to eval.json in the run directory (or the model folder).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.markup import escape

from glmtune.checkpoints.export import generation_kwargs
from glmtune.checkpoints.load import Loaded, load_for_inference
from glmtune.console import quiet_libraries, term
from glmtune.data.formats import Example
from glmtune.data.prepare import labels_of, render_example
from glmtune.data.sources import examples_of, read_splits
from glmtune.errors import UsageError
from glmtune.inference.generation import generate_answers
from glmtune.inference.metrics import METRIC_NOTES, generation_scores
from glmtune.inference.retention import measure_retention, report_retention
from glmtune.recipe import Recipe
from glmtune.rundir import atomic_write_text, run_recipe


def evaluate_source(
    source: Path,
    *,
    recipe: Recipe | None = None,
    overrides: list[str] | None = None,
    retention: list[str] | None = None,
) -> dict[str, Any]:
    """Score a run or model on the recipe's eval data (and the base beside it); with `retention` (or
    `[eval] retention`) also ask both general questions and report how far the tuned answers moved."""
    quiet_libraries()
    loaded = load_for_inference(source)
    if recipe is None:
        if loaded.run is None:
            raise UsageError(
                f"{source}: an exported model carries no recipe; pass --recipe RECIPE to name the eval data"
            )
        from glmtune.recipe_files import load_recipe

        recipe = load_recipe(source / "recipe.toml", overrides or []) if overrides else run_recipe(source)
    general = retention or recipe.eval.retention
    results = {"tuned": score(loaded, recipe, required=not general)}
    if recipe.eval.compare_base and _has_adapter(loaded):
        with loaded.model.disable_adapter():
            results = {"base": score(loaded, recipe, required=not general), **results}
    _report(results)
    written: dict[str, Any] = {"results": results, "notes": METRIC_NOTES}
    if general:
        written["retention"] = measure_retention(loaded, recipe, general)
        report_retention(results, written["retention"])
    atomic_write_text(source / "eval.json", json.dumps(written, indent=2) + "\n")
    term.ok(f"wrote {source / 'eval.json'}")
    return results


def _has_adapter(loaded: Loaded) -> bool:
    return hasattr(loaded.model, "disable_adapter")


def score(loaded: Loaded, recipe: Recipe, required: bool = True) -> dict[str, float]:
    scores: dict[str, float] = {}
    held_out = list(read_splits(recipe.data).eval) if recipe.data.has_eval else []
    if held_out:
        loss = eval_loss(loaded, recipe, held_out)
        scores |= {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    pairs = examples_of(recipe.eval.data, "eval.data", recipe.data) if recipe.eval.data else held_out
    if pairs:
        scores |= generation_metrics(loaded, recipe, pairs)
    if not scores and required:
        raise UsageError(
            "nothing to evaluate: set data.eval (loss) or eval.data (generation metrics) in the recipe"
        )
    return scores


def eval_loss(loaded: Loaded, recipe: Recipe, examples: list[Example]) -> float:
    """Mean loss per trained token over the eval split, rendered exactly as for training."""
    import torch

    data = recipe.data
    total, count = 0.0, 0
    for example in examples:
        sample = render_example(example, data, loaded.family, loaded.tokenizer)
        if sample.status == "dropped":
            continue
        ids = torch.tensor([sample.ids], device=loaded.model.device)
        targets = torch.tensor([labels_of(sample)], device=loaded.model.device)
        with torch.no_grad():
            output = loaded.model(input_ids=ids, labels=targets)
        trained = sum(sample.mask[1:])  # the first token is never a target after the shift
        total += float(output.loss) * trained
        count += trained
    return total / max(count, 1)


def generation_metrics(loaded: Loaded, recipe: Recipe, examples: list[Example]) -> dict[str, float]:
    if recipe.eval.max_samples:
        examples = examples[: recipe.eval.max_samples]
    prompts = [example.messages[:-1] for example in examples]
    references = [example.messages[-1].content for example in examples]
    predictions = generate_answers(
        loaded.model,
        loaded.tokenizer,
        loaded.family,
        prompts,
        generation_kwargs(recipe.generation),
        batch_size=recipe.eval.batch_size,
    )
    return {**generation_scores(predictions, references), "samples": float(len(examples))}


def _report(results: dict[str, dict[str, float]]) -> None:
    if not any(results.values()):
        return
    names = list(results)
    metrics = list(dict.fromkeys(key for scores in results.values() for key in scores))
    rows = [
        [metric, *(f"{results[name].get(metric, float('nan')):.2f}" for name in names)] for metric in metrics
    ]
    term.table("evaluation", ["metric", *names], rows)
    term.info(f"[dim]{escape(METRIC_NOTES)}[/]", markup=True)
