"""`glmtune prepare`: data files -> tokenized, masked dataset in the run's data folder, with stats and a fingerprint.

The fingerprint covers the recipe's data section, the family, the tokenizer and the source files' bytes, so `train`
reuses a prepared dataset exactly when nothing that shapes it has changed. Samples are stored unpadded: batches are
padded to their own longest sample at training time. Records stream from the files to Arrow shards a batch at a
time (the text of RENDER_BATCH records is tokenised in one call), so memory stays flat however large the data is
(mixing and an eval split drawn from train read the records first: they sample from whole sources); everything is written to a staging folder first, so a bad record anywhere (line
900,000 too) ends the command with its file:line and nothing written.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from glmtune import __version__
from glmtune.data.formats import Example
from glmtune.data.render import (
    LEFT_OUT,
    Rendered,
    reasoning_left_out,
    render_conversation,
    render_conversations,
    render_sample,
    thinking_options,
)
from glmtune.data.sources import read_splits, source_files
from glmtune.errors import UsageError
from glmtune.families import Family, Message
from glmtune.recipe import DataSection
from glmtune.rundir import atomic_write_text, staged_dir

IGNORE_INDEX = -100  # label of tokens that are not trained (transformers' convention)
SOURCES_FILE = "sources.json"  # per source: records read, held out, drawn, samples, tokens, truncations
SOURCE_COUNTS = ("samples", "tokens", "truncated", "dropped")
RENDER_BATCH = 1000  # records tokenised in one call: the batch, not the file, is what is in memory


@dataclass
class Prepared:
    folder: Path
    splits: dict[str, Any]  # split name -> datasets.Dataset with input_ids, labels
    stats: dict[str, dict[str, float]]
    reused: bool
    sources: dict[str, Any] = field(default_factory=dict)  # sources.json: seed, per-source counts, warnings


def prepare_data(data: DataSection, family: Family, tokenizer, folder: Path) -> Prepared:
    """Tokenize the recipe's splits into `folder`, or reuse what is there when the fingerprint matches."""
    if not data.train:
        raise UsageError(
            "data.train: no training data; list .json/.jsonl files or folders, or registry entries"
        )
    fingerprint = data_fingerprint(data, family, tokenizer)
    stamp = folder / "fingerprint.txt"
    if stamp.is_file() and stamp.read_text().strip() == fingerprint:
        stats = json.loads((folder / "stats.json").read_text())
        splits = {name: load_split(folder / name) for name in stats}
        sources_file = folder / SOURCES_FILE
        sources = json.loads(sources_file.read_text(encoding="utf-8")) if sources_file.is_file() else {}
        return Prepared(folder, splits, stats, reused=True, sources=sources)
    read = read_splits(data)
    train_tally = Tally(data)
    with staged_dir(folder) as staging:
        stats = {
            "train": write_split(
                data, read.train, "data.train", family, tokenizer, staging / "train", train_tally
            )
        }
        if read.has_eval:
            stats["eval"] = write_split(
                data, read.eval, "data.eval", family, tokenizer, staging / "eval", Tally(data)
            )
        atomic_write_text(staging / "stats.json", json.dumps(stats, indent=2) + "\n")
        sources = {
            "seed": data.seed,
            "warnings": read.warnings,
            "sources": [s | train_tally.by_source.get(s["name"], {}) for s in read.sources],
        }
        atomic_write_text(staging / SOURCES_FILE, json.dumps(sources, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(staging / "fingerprint.txt", fingerprint + "\n")
    splits = {name: load_split(folder / name) for name in stats}
    return Prepared(folder, splits, stats, reused=False, sources=sources)


def write_split(
    data: DataSection,
    examples: Iterable[Example],
    key: str,
    family: Family,
    tokenizer,
    target: Path,
    tally: Tally,
) -> dict[str, float]:
    """Stream examples -> rendered samples -> one Arrow file in `target`, a batch of RENDER_BATCH records at a time
    (datasets' own writer, the file `load_split` memory-maps); returns the split's stats. A bad record raises before
    `target` exists."""
    from datasets import Features, Sequence, Value
    from datasets.arrow_writer import ArrowWriter

    features = Features({name: Sequence(Value("int32")) for name in ("input_ids", "labels")})
    build = target.with_name(f"{target.name}.build")
    build.mkdir()
    with ArrowWriter(features=features, path=str(build / "data-00000-of-00001.arrow")) as writer:
        for chunk in chunks(examples, RENDER_BATCH):
            rendered = zip(chunk, render_examples(chunk, data, family, tokenizer), strict=True)
            kept = [sample for e, sample in rendered if tally.add(sample, e, family).status != "dropped"]
            writer.write_batch({"input_ids": [s.ids for s in kept], "labels": [labels_of(s) for s in kept]})
        tally.check(key)
        writer.finalize()
    build.rename(target)
    return tally.stats()


def load_split(folder: Path):
    """A prepared split, memory-mapped from its Arrow shards (nothing is read into memory)."""
    from datasets import Dataset, concatenate_datasets

    shards = sorted(folder.glob("data-*-of-*.arrow"))
    if not shards:
        raise UsageError(f"{folder}: no prepared data here; run glmtune prepare again")
    parts = [Dataset.from_file(str(shard)) for shard in shards]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


class Tally:
    """Counts and lengths of a split as its samples stream past (4 bytes a sample), overall and per source."""

    def __init__(self, data: DataSection) -> None:
        self.data = data
        self.records = 0
        left_out = [LEFT_OUT[data.thinking]] if data.thinking in LEFT_OUT else []
        self.counts = dict.fromkeys(("truncated", "dropped", *truncation_keys(data), *left_out), 0)
        self.lengths = array("I")
        self.supervised = 0
        self.by_source: dict[str, dict[str, int]] = {}

    def add(self, sample: Rendered, example: Example, family: Family) -> Rendered:
        self.records += 1
        tally = self.by_source.setdefault(example.source, dict.fromkeys(SOURCE_COUNTS, 0))
        if sample.status != "dropped" and reasoning_left_out(example.messages, self.data.thinking, family):
            self.counts[LEFT_OUT[self.data.thinking]] += 1
        if sample.status != "ok":
            self.counts[sample.status] += 1
            tally[sample.status] += 1
        for change in sample.changes if sample.status == "truncated" else ():
            self.counts[f"truncated: {change}"] += 1
        if sample.status != "dropped":
            self.lengths.append(len(sample.ids))
            self.supervised += sum(sample.mask)
            tally["samples"] += 1
            tally["tokens"] += len(sample.ids)
        return sample

    def check(self, key: str) -> None:
        if not self.records:
            raise UsageError(f"{key}: the data files hold no records; add samples, or check the paths")
        if not self.lengths:
            raise UsageError(
                f"{key}: every sample was dropped as longer than data.max_length={self.data.max_length}; raise it"
            )

    def stats(self) -> dict[str, float]:
        import numpy as np

        lengths = np.frombuffer(self.lengths, dtype=np.uint32).astype(np.int64)
        return {
            "records": self.records,
            "samples": len(lengths),
            "tokens": int(lengths.sum()),
            "supervised_tokens": self.supervised,
            **self.counts,
            "length_p50": float(np.percentile(lengths, 50)),
            "length_p90": float(np.percentile(lengths, 90)),
            "length_p99": float(np.percentile(lengths, 99)),
            "length_max": int(lengths.max()),
        }


def chunks(items: Iterable[Example], size: int) -> Iterator[list[Example]]:
    """`items` in lists of `size` (the last one shorter), read lazily: one chunk in memory at a time."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def render_examples(examples: list[Example], data: DataSection, family: Family, tokenizer) -> list[Rendered]:
    """Records rendered as the recipe says, their text encoded in one batch: the samples `render_example` gives one
    by one. A sample over data.max_length, and every record of a batch where some record is refused, goes through
    `render_example` on its own (truncation re-renders it; a refusal then names its record)."""
    try:
        conversations = [thinking_options(e.messages, data.thinking, e.tools) for e in examples]
        rendered = render_conversations(conversations, family, tokenizer, mask_history=data.mask_history)
    except UsageError:
        return [render_example(example, data, family, tokenizer) for example in examples]
    return [
        sample if len(sample.ids) <= data.max_length else render_example(example, data, family, tokenizer)
        for example, sample in zip(examples, rendered, strict=True)
    ]


def render_example(example: Example, data: DataSection, family: Family, tokenizer) -> Rendered:
    """One record rendered as the recipe says; a problem the family finds in it names the record."""
    try:
        messages, options = thinking_options(example.messages, data.thinking, example.tools)
        return render_sample(
            messages,
            family,
            tokenizer,
            max_length=data.max_length,
            overlong=data.overlong,
            mask_history=data.mask_history,
            cut=data.cut,
            options=options,
        )
    except UsageError as exc:
        raise UsageError(f"{example.origin}: {exc}") from None


def labels_of(sample: Rendered) -> list[int]:
    """Training labels: the ids where the mask trains, IGNORE_INDEX elsewhere."""
    return [t if m else IGNORE_INDEX for t, m in zip(sample.ids, sample.mask, strict=True)]


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
        digest.update(_file_digest(file))
    return digest.hexdigest()


def _file_digest(file: Path) -> bytes:
    """sha256 of a file read in chunks: a data file may be larger than memory."""
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


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


def report_prepared(prepared: Prepared, title: str) -> None:
    """The stats table, the per-source table (when there are several sources or a mix) and the data warnings."""
    from glmtune.console import term

    term.table(title, *stats_rows(prepared.stats))
    sources = prepared.sources.get("sources", [])
    if len(sources) > 1 or any("mix" in s or s["held_out"] for s in sources):
        keys = ["records", "held_out", "drawn", "tokens", "truncated", "dropped"]  # samples: drawn - dropped
        term.table(
            f"train sources (data.seed {prepared.sources['seed']})",
            ["source", *keys],
            [[s["name"], *(s.get(k, 0) for k in keys)] for s in sources],
        )
    for warning in prepared.sources.get("warnings", []):
        term.warn(warning)
    if cleared := prepared.stats["train"].get(LEFT_OUT["template"]):
        term.info(
            f"{cleared} samples carry reasoning in turns before their last user message; data.thinking = "
            '"template" trains them as the template renders them, without it ("keep" trains it)'
        )
