"""`glmtune prepare`: data files -> tokenized, masked dataset in the run's data folder, with stats and a fingerprint.

The fingerprint covers the recipe's data section, the family, the tokenizer and the source files' bytes, so `train`
reuses a prepared dataset exactly when nothing that shapes it has changed. Samples are stored unpadded: batches are
padded to their own longest sample at training time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune import __version__
from glmtune.data.formats import Example, data_files, read_examples
from glmtune.data.render import Rendered, render_conversation, render_sample
from glmtune.errors import UsageError
from glmtune.families import Family, Message
from glmtune.recipe import DataSection
from glmtune.rundir import atomic_write_text, staged_dir

IGNORE_INDEX = -100  # label of tokens that are not trained (transformers' convention)


@dataclass
class Prepared:
    folder: Path
    splits: dict[str, Any]  # split name -> datasets.Dataset with input_ids, labels
    stats: dict[str, dict[str, float]]
    reused: bool


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
        return Prepared(folder, splits, stats, reused=True)
    rendered = {"train": _render_split(data, data.train, "data.train", family, tokenizer)}
    if data.eval:
        rendered["eval"] = _render_split(data, data.eval, "data.eval", family, tokenizer)
    with staged_dir(folder) as staging:
        splits = {}
        for name, (dataset, _) in rendered.items():
            dataset.save_to_disk(str(staging / name))
            splits[name] = dataset
        stats = {name: split_stats for name, (_, split_stats) in rendered.items()}
        atomic_write_text(staging / "stats.json", json.dumps(stats, indent=2) + "\n")
        atomic_write_text(staging / "fingerprint.txt", fingerprint + "\n")
    splits = {name: load_from_disk(str(folder / name)) for name in rendered}
    return Prepared(folder, splits, stats, reused=False)


def _render_split(data: DataSection, paths: list[str], key: str, family: Family, tokenizer):
    from datasets import Dataset

    examples = read_examples(paths, key, data.format, data.variables, data.system)
    columns: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    counts = {"truncated": 0, "dropped": 0}
    for example in examples:
        sample = render_example(example, data, family, tokenizer)
        if sample.status != "ok":
            counts[sample.status] += 1
        if sample.status == "dropped":
            continue
        columns["input_ids"].append(sample.ids)
        columns["labels"].append(labels_of(sample))
    if not columns["input_ids"]:
        raise UsageError(
            f"{key}: every sample was dropped as longer than data.max_length={data.max_length}; raise it"
        )
    return Dataset.from_dict(columns), _stats(columns, len(examples), counts)


def render_example(example: Example, data: DataSection, family: Family, tokenizer) -> Rendered:
    """One record rendered as the recipe says; a problem the family finds in it names the record."""
    try:
        return render_sample(
            example.messages,
            family,
            tokenizer,
            max_length=data.max_length,
            overlong=data.overlong,
            mask_history=data.mask_history,
        )
    except UsageError as exc:
        raise UsageError(f"{example.origin}: {exc}") from None


def labels_of(sample: Rendered) -> list[int]:
    """Training labels: the ids where the mask trains, IGNORE_INDEX elsewhere."""
    return [t if m else IGNORE_INDEX for t, m in zip(sample.ids, sample.mask, strict=True)]


def _stats(columns: dict[str, list[list[int]]], read: int, counts: dict[str, int]) -> dict[str, float]:
    import numpy as np

    lengths = np.array([len(ids) for ids in columns["input_ids"]])
    supervised = sum(sum(1 for t in labels if t != IGNORE_INDEX) for labels in columns["labels"])
    return {
        "records": read,
        "samples": len(lengths),
        "tokens": int(lengths.sum()),
        "supervised_tokens": supervised,
        "truncated": counts["truncated"],
        "dropped": counts["dropped"],
        "length_p50": float(np.percentile(lengths, 50)),
        "length_p90": float(np.percentile(lengths, 90)),
        "length_p99": float(np.percentile(lengths, 99)),
        "length_max": int(lengths.max()),
    }


def data_fingerprint(data: DataSection, family: Family, tokenizer) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(data.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(family.name.encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    digest.update(layout_fingerprint(family, tokenizer).encode())
    for key, paths in (("data.train", data.train), ("data.eval", data.eval)):
        for file in data_files(paths, key):
            digest.update(str(file.resolve()).encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


PROBE = [
    Message("system", "s"),
    Message("user", "q1"),
    Message("assistant", "a1"),
    Message("user", "q2"),
    Message("assistant", "a2"),
]


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
