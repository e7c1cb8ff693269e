"""`glmtune prepare`: data files -> tokenized, masked dataset in the run's data folder, with stats and a fingerprint.

The fingerprint covers the recipe's data section, the family, the tokenizer and the source files' bytes, so `train`
reuses a prepared dataset exactly when nothing that shapes it has changed. Samples are stored unpadded: batches are
padded to their own longest sample at training time. Records stream from the files to Arrow shards one at a time,
so memory stays flat however large the data is; everything is written to a staging folder first, so a bad record
anywhere (line 900,000 too) ends the command with its file:line and nothing written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune import __version__
from glmtune.data.formats import Example, data_files, iter_examples
from glmtune.data.render import Rendered, render_conversation, render_sample, thinking_options
from glmtune.errors import UsageError
from glmtune.families import Family, Message
from glmtune.recipe import DataSection
from glmtune.rundir import atomic_write_text, staged_dir

IGNORE_INDEX = -100  # label of tokens that are not trained (transformers' convention)
SHARD_SIZE = "256MB"  # Arrow shards of the prepared dataset; train memory-maps them


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
    sources = {
        "train": (data.train, "data.train"),
        **({"eval": (data.eval, "data.eval")} if data.eval else {}),
    }
    with staged_dir(folder) as staging:
        stats = {
            name: write_split(data, paths, key, family, tokenizer, staging / name)
            for name, (paths, key) in sources.items()
        }
        atomic_write_text(staging / "stats.json", json.dumps(stats, indent=2) + "\n")
        atomic_write_text(staging / "fingerprint.txt", fingerprint + "\n")
    splits = {name: load_from_disk(str(folder / name)) for name in sources}
    return Prepared(folder, splits, stats, reused=False)


def write_split(data: DataSection, paths: list[str], key: str, family: Family, tokenizer, target: Path):
    """Stream records -> rendered samples -> Arrow shards in `target`, in bounded memory (datasets writes rows
    in batches and memory-maps them); returns the split's stats. A bad record raises before `target` exists."""
    from datasets import Dataset, Features, Sequence, Value
    from datasets.exceptions import DatasetGenerationError

    tally = Tally()

    def samples():
        for example in iter_examples(paths, key, data.format, data.variables, data.system):
            sample = tally.add(render_example(example, data, family, tokenizer))
            if sample.status != "dropped":
                yield {"input_ids": sample.ids, "labels": labels_of(sample)}

    columns = {name: Sequence(Value("int32")) for name in ("input_ids", "labels")}
    build = target.with_name(f"{target.name}.build")
    try:
        dataset = Dataset.from_generator(samples, features=Features(columns), cache_dir=str(build),
                                         fingerprint=f"{key}-{os.getpid()}")  # fmt: skip
    except DatasetGenerationError as exc:  # datasets wraps what the generator raised
        if isinstance(exc.__cause__, UsageError):
            raise exc.__cause__ from None
        raise
    except ValueError:
        tally.check(key, data)  # datasets refuses a split without rows: say why there are none
        raise
    tally.check(key, data)
    dataset.save_to_disk(str(target), max_shard_size=SHARD_SIZE)
    del dataset
    shutil.rmtree(build, ignore_errors=True)
    return tally.stats()


class Tally:
    """Counts and lengths of a split as its samples stream past (4 bytes a sample)."""

    def __init__(self) -> None:
        self.records = 0
        self.counts = {"truncated": 0, "dropped": 0}
        self.lengths = array("I")
        self.supervised = 0

    def add(self, sample: Rendered) -> Rendered:
        self.records += 1
        if sample.status != "ok":
            self.counts[sample.status] += 1
        if sample.status != "dropped":
            self.lengths.append(len(sample.ids))
            self.supervised += sum(sample.mask)
        return sample

    def check(self, key: str, data: DataSection) -> None:
        if not self.records:
            raise UsageError(f"{key}: the data files hold no records; add samples, or check the paths")
        if not self.lengths:
            raise UsageError(
                f"{key}: every sample was dropped as longer than data.max_length={data.max_length}; raise it"
            )

    def stats(self) -> dict[str, float]:
        import numpy as np

        lengths = np.frombuffer(self.lengths, dtype=np.uint32).astype(np.int64)
        return {
            "records": self.records,
            "samples": len(lengths),
            "tokens": int(lengths.sum()),
            "supervised_tokens": self.supervised,
            "truncated": self.counts["truncated"],
            "dropped": self.counts["dropped"],
            "length_p50": float(np.percentile(lengths, 50)),
            "length_p90": float(np.percentile(lengths, 90)),
            "length_p99": float(np.percentile(lengths, 99)),
            "length_max": int(lengths.max()),
        }


def render_example(example: Example, data: DataSection, family: Family, tokenizer) -> Rendered:
    """One record rendered as the recipe says; a problem the family finds in it names the record."""
    try:
        messages, options = thinking_options(example.messages, data.thinking, example.tools)
        return render_sample(messages, family, tokenizer, max_length=data.max_length,
                             overlong=data.overlong, mask_history=data.mask_history, options=options)  # fmt: skip
    except UsageError as exc:
        raise UsageError(f"{example.origin}: {exc}") from None


def labels_of(sample: Rendered) -> list[int]:
    """Training labels: the ids where the mask trains, IGNORE_INDEX elsewhere."""
    return [t if m else IGNORE_INDEX for t, m in zip(sample.ids, sample.mask, strict=True)]


def data_fingerprint(data: DataSection, family: Family, tokenizer) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(data.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(family.name.encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    digest.update(layout_fingerprint(family, tokenizer).encode())
    for key, paths in (("data.train", data.train), ("data.eval", data.eval)):
        for file in data_files(paths, key):
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
