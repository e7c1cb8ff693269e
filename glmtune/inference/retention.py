"""Knowledge retention for `glmtune eval`: did fine-tuning keep what the base model knew?

Base and tuned answer the same held-out general questions (none of them trained on). How far the tuned answers
moved is measured against the base's own answers (exact match and ROUGE: 100 means unchanged) and, for questions
that carry a reference answer, against the reference for both models. The report puts these beside the trained
task's scores, so that "identity learned, general answers kept" (or not) can be read off one table.

Question files are .json/.jsonl records with `question` (or alpaca's `instruction` and `input`), an optional
`reference` (or `output`) and an optional `system`; glmtune ships data/retention/general.jsonl.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from glmtune.checkpoints.export import generation_kwargs
from glmtune.checkpoints.load import Loaded, base_model_folder, load_model
from glmtune.console import term
from glmtune.data.formats import data_files
from glmtune.data.records import records
from glmtune.errors import UsageError
from glmtune.families import Message
from glmtune.inference.generation import generate_answers
from glmtune.inference.metrics import generation_scores
from glmtune.recipe import Recipe
from glmtune.rundir import run_recipe

SHOWN = ("exact_match", "rouge-1", "rouge-l", "bleu-4")  # the metrics the side-by-side table shows


@dataclass(frozen=True)
class Question:
    messages: list[Message]  # the prompt: an optional system message and the question
    reference: str | None
    origin: str


def read_questions(paths: list[str], key: str) -> list[Question]:
    questions = [
        _question(record, origin) for file in data_files(paths, key) for origin, record in records(file)
    ]
    if not questions:
        raise UsageError(f"{key}: the retention files hold no questions")
    return questions


def _question(record: Any, origin: str) -> Question:
    if not isinstance(record, dict):
        raise UsageError(f"{origin}: expected a JSON object with 'question' (or 'instruction')")
    text = record.get("question", record.get("instruction"))
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{origin}: missing 'question' (or 'instruction'), the text to ask")
    if isinstance(record.get("input"), str) and record["input"]:
        text = f"{text}\n{record['input']}"
    reference = record.get("reference", record.get("output"))
    if reference is not None and not isinstance(reference, str):
        raise UsageError(f"{origin}: 'reference' (or 'output') must be a string")
    system = record.get("system")
    messages = ([Message("system", system)] if isinstance(system, str) and system else []) + [
        Message("user", text)
    ]
    return Question(messages, reference or None, origin)


def measure_retention(loaded: Loaded, recipe: Recipe, paths: list[str]) -> dict[str, dict[str, float]]:
    """Answers of base and tuned to the questions in `paths`, scored against each other and the references."""
    questions = read_questions(paths, "eval.retention")
    prompts = [q.messages for q in questions]
    settings = generation_kwargs(recipe.generation)
    batch = recipe.eval.batch_size
    tuned = generate_answers(
        loaded.model, loaded.tokenizer, loaded.family, prompts, settings, batch_size=batch
    )
    with base_model(loaded) as base:
        before = generate_answers(base, loaded.tokenizer, loaded.family, prompts, settings, batch_size=batch)
    return retention_scores(tuned, before, [q.reference for q in questions])


def retention_scores(
    tuned: list[str], base: list[str], references: list[str | None]
) -> dict[str, dict[str, float]]:
    """Tuned against base answers, and both against the references that exist; 0-100 like `generation_scores`."""
    scores = {"tuned vs base": generation_scores(tuned, base) | {"questions": float(len(tuned))}}
    with_reference = [i for i, reference in enumerate(references) if reference]
    if with_reference:
        refs = [references[i] or "" for i in with_reference]
        for name, answers in (("base vs reference", base), ("tuned vs reference", tuned)):
            scores[name] = generation_scores([answers[i] for i in with_reference], refs)
            scores[name]["questions"] = float(len(with_reference))
    return scores


@contextmanager
def base_model(loaded: Loaded) -> Iterator[Any]:
    """The untuned model: the adapter switched off, or the base weights a full fine-tuning run started from."""
    if hasattr(loaded.model, "disable_adapter"):
        with loaded.model.disable_adapter():
            yield loaded.model
        return
    if loaded.run is None:
        raise UsageError(
            f"{loaded.source}: an exported model does not name its base; measure retention on the run directory"
        )
    switches = run_recipe(
        loaded.source
    ).model  # the loading switches come from the run's recipe, as for training
    base = load_model(
        base_model_folder(loaded.run),
        allow_pickle=switches.allow_pickle,
        trust_remote_code=switches.trust_remote_code,
        family=loaded.family,
    )
    base.to(loaded.model.device).eval()
    yield base


def report_retention(task: dict[str, dict[str, float]], retention: dict[str, dict[str, float]]) -> None:
    """The trained task (base, tuned) beside the general questions, and one line saying what moved."""
    columns = {
        **{f"task: {name}": scores for name, scores in task.items()},
        **{f"general: {name}": scores for name, scores in retention.items()},
    }
    rows = [
        [metric, *(_cell(scores.get(metric), metric) for scores in columns.values())]
        for metric in (*SHOWN, "questions")
    ]
    term.table("knowledge retention", ["metric", *columns], rows)
    term.info(retention_summary(task, retention))


def retention_summary(task: dict[str, dict[str, float]], retention: dict[str, dict[str, float]]) -> str:
    kept = retention["tuned vs base"]
    line = (
        f"general questions: {kept['exact_match']:.0f}% of the tuned answers equal the base's, "
        f"ROUGE-L {kept['rouge-l']:.1f} against them (100 = unchanged)"
    )
    if "tuned" in task and "exact_match" in task["tuned"]:
        before = task.get("base", {}).get("exact_match")
        moved = f"{before:.0f} -> " if before is not None else ""
        line = f"trained task: exact match {moved}{task['tuned']['exact_match']:.0f}; " + line
    if "tuned vs reference" in retention:
        line += (
            f"; ROUGE-L against the references: base {retention['base vs reference']['rouge-l']:.1f}, "
            f"tuned {retention['tuned vs reference']['rouge-l']:.1f}"
        )
    return line


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if metric == "questions" else f"{value:.2f}"
