"""`glmtune prepare`: data files -> tokenized, masked dataset in the run's data folder, with stats and a fingerprint.

The fingerprint covers the recipe's data section, the family, the tokenizer and the source files' bytes, so `train`
reuses a prepared dataset exactly when nothing that shapes it has changed. Samples are stored unpadded: batches are
padded to their own longest sample at training time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmtune import __version__
from glmtune.data.formats import Example
from glmtune.data.render import Rendered, render_conversation, render_sample, thinking_options
from glmtune.data.sources import read_splits, source_files
from glmtune.errors import UsageError
from glmtune.families import Family, Message
from glmtune.recipe import DataSection
from glmtune.rundir import atomic_write_text, staged_dir

IGNORE_INDEX = -100  # label of tokens that are not trained (transformers' convention)
SOURCES_FILE = "sources.json"  # per source: records read, held out, drawn, samples, tokens, truncations
SOURCE_COUNTS = ("samples", "tokens", "truncated", "dropped")


@dataclass
class Prepared:
    folder: Path
    splits: dict[str, Any]  # split name -> datasets.Dataset with input_ids, labels
    stats: dict[str, dict[str, float]]
    reused: bool
    sources: dict[str, Any] = field(default_factory=dict)  # sources.json: seed, per-source counts, warnings


def prepare_data(data: DataSection, family: Family, tokenizer, folder: Path) -> Prepared:
    """Tokenize the recipe's splits into `folder`, or reuse what is there when the fingerprint matches."""
    from datasets import load_from_disk

    if not data.train:
        raise UsageError("data.train: no training data; list .json/.jsonl files or folders")
    fingerprint = data_fingerprint(data, family, tokenizer)
    stamp = folder / "fingerprint.txt"
    if stamp.is_file() and stamp.read_text().strip() == fingerprint:
        stats = json.loads((folder / "stats.json").read_text())
        splits = {name: load_from_disk(str(folder / name)) for name in stats}
        sources_file = folder / SOURCES_FILE
        sources = json.loads(sources_file.read_text(encoding="utf-8")) if sources_file.is_file() else {}
        return Prepared(folder, splits, stats, reused=True, sources=sources)
    read = read_splits(data)
    by_source: dict[str, dict[str, int]] = {}
    rendered = {"train": _render_split(data, read.train, "data.train", family, tokenizer, by_source)}
    if read.eval:
        rendered["eval"] = _render_split(data, read.eval, "data.eval", family, tokenizer, {})
    with staged_dir(folder) as staging:
        splits = {}
        for name, (dataset, _) in rendered.items():
            dataset.save_to_disk(str(staging / name))
            splits[name] = dataset
        stats = {name: split_stats for name, (_, split_stats) in rendered.items()}
        atomic_write_text(staging / "stats.json", json.dumps(stats, indent=2) + "\n")
        sources = {"seed": data.seed, "sources": [s | by_source.get(s["name"], {}) for s in read.sources],
                   "warnings": read.warnings}  # fmt: skip
        atomic_write_text(staging / SOURCES_FILE, json.dumps(sources, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(staging / "fingerprint.txt", fingerprint + "\n")
    splits = {name: load_from_disk(str(folder / name)) for name in rendered}
    return Prepared(folder, splits, stats, reused=False, sources=sources)


def _render_split(data: DataSection, examples: list[Example], key: str, family: Family, tokenizer,
                  by_source: dict[str, dict[str, int]]):  # fmt: skip
    from datasets import Dataset

    columns: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    counts = dict.fromkeys(("truncated", "dropped", *truncation_keys(data)), 0)
    for example in examples:
        sample = render_example(example, data, family, tokenizer)
        tally = by_source.setdefault(example.source, dict.fromkeys(SOURCE_COUNTS, 0))
        if sample.status != "ok":
            counts[sample.status] += 1
            tally[sample.status] += 1
        for change in sample.changes if sample.status == "truncated" else ():
            counts[f"truncated: {change}"] += 1
        if sample.status == "dropped":
            continue
        tally["samples"] += 1
        tally["tokens"] += len(sample.ids)
        columns["input_ids"].append(sample.ids)
        columns["labels"].append(
            [t if m else IGNORE_INDEX for t, m in zip(sample.ids, sample.mask, strict=True)]
        )
    if not columns["input_ids"]:
        raise UsageError(
            f"{key}: every sample was dropped as longer than data.max_length={data.max_length}; raise it"
        )
    return Dataset.from_dict(columns), _stats(columns, len(examples), counts)


def render_example(example: Example, data: DataSection, family: Family, tokenizer) -> Rendered:
    """One record rendered as the recipe says; a problem the family finds in it names the record."""
    try:
        messages, options = thinking_options(example.messages, data.thinking, example.tools)
        return render_sample(messages, family, tokenizer, max_length=data.max_length, overlong=data.overlong,
                             mask_history=data.mask_history, cut=data.cut, options=options)  # fmt: skip
    except UsageError as exc:
        raise UsageError(f"{example.origin}: {exc}") from None


def _stats(columns: dict[str, list[list[int]]], read: int, counts: dict[str, int]) -> dict[str, float]:
    import numpy as np

    lengths = np.array([len(ids) for ids in columns["input_ids"]])
    supervised = sum(sum(1 for t in labels if t != IGNORE_INDEX) for labels in columns["labels"])
    return {
        "records": read,
        "samples": len(lengths),
        "tokens": int(lengths.sum()),
        "supervised_tokens": supervised,
        **counts,
        "length_p50": float(np.percentile(lengths, 50)),
        "length_p90": float(np.percentile(lengths, 90)),
        "length_p99": float(np.percentile(lengths, 99)),
        "length_max": int(lengths.max()),
    }


def truncation_keys(data: DataSection) -> list[str]:
    """Stats keys counting, per kind of change, the samples truncation changed."""
    return [
        f"truncated: {change}" for change in ("history dropped", f"prompt cut ({data.cut})", "answer end cut")
    ]


def data_fingerprint(data: DataSection, family: Family, tokenizer) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(data.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(family.name.encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    digest.update(layout_fingerprint(family, tokenizer).encode())
    for file in source_files(data):
        digest.update(str(file.resolve()).encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


PROBE = [Message("system", "s"), Message("user", "q1"), Message("assistant", "a1"), Message("user", "q2"),
         Message("assistant", "a2")]  # fmt: skip


def layout_fingerprint(family: Family, tokenizer) -> str:
    """Ids and mask of a fixed conversation: a change in how glmtune renders or masks invalidates prepared data."""
    rendered = render_conversation(PROBE, family, tokenizer)
    return hashlib.sha256(json.dumps([__version__, rendered.ids, rendered.mask]).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def stats_rows(stats: dict[str, dict[str, float]]) -> tuple[list[str], list[list[Any]]]:
    """Rows for the terminal table: one column per split."""
    names = list(stats)
    keys = list(next(iter(stats.values())))
    return ["", *names], [[key, *(stats[name][key] for name in names)] for key in keys]


def report_prepared(prepared: Prepared, title: str) -> None:
    """The stats table, the per-source table (when there are several sources or a mix) and the data warnings."""
    from glmtune.console import term

    term.table(title, *stats_rows(prepared.stats))
    sources = prepared.sources.get("sources", [])
    if len(sources) > 1 or any("mix" in s or s["held_out"] for s in sources):
        keys = ["records", "held_out", "drawn", "tokens", "truncated", "dropped"]  # samples: drawn - dropped
        term.table(f"train sources (data.seed {prepared.sources['seed']})", ["source", *keys],
                   [[s["name"], *(s.get(k, 0) for k in keys)] for s in sources])  # fmt: skip
    for warning in prepared.sources.get("warnings", []):
        term.warn(warning)


def prepare_run(recipe, show: int = 0) -> Prepared:
    """`glmtune prepare`: tokenize into the run's data folder, print stats and optionally N rendered samples."""
    from glmtune.checkpoints.load import family_for, load_tokenizer, quiet_libraries, resolve_model_path
    from glmtune.console import term
    from glmtune.data.render import show as render_markup
    from glmtune.rundir import run_dir_of

    quiet_libraries()
    base = resolve_model_path(recipe.model.path)
    family = family_for(base, recipe.model.family)
    tokenizer = load_tokenizer(base, recipe.model.trust_remote_code, family)
    prepared = prepare_data(recipe.data, family, tokenizer, run_dir_of(recipe) / "data")
    report_prepared(prepared, f"data {'reused' if prepared.reused else 'prepared'}")
    for index in range(min(show, len(prepared.splits["train"]))):
        row = prepared.splits["train"][index]
        mask = [label != IGNORE_INDEX for label in row["labels"]]
        term.out(
            f"[bold]sample {index}[/] ({len(row['input_ids'])} tokens, {sum(mask)} trained)", markup=True
        )
        term.out(render_markup(row["input_ids"], mask, tokenizer), markup=True)
    return prepared
