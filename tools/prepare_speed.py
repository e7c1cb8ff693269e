"""Samples/s of `glmtune prepare` against the same work done with `datasets.map`: `python tools/prepare_speed.py`.

Writes N short alpaca records (tools/prepare_memory.py's data; default 100,000) to a temporary .jsonl file and times
on one tokenizer (default builtin:tiny-glm4; `--tokenizer FOLDER` for a real one, e.g. glm-4-9b-chat):

- prepare: `prepare_data`, what `glmtune prepare` runs (read, render + mask, write Arrow, reload);
- map: `datasets.load_dataset("json")` then `Dataset.map` of glmtune's per-record `render_example`;
- map-batched: the same with `batched=True` over glmtune's batched `render_examples`;
- map-bare: `map(batched=True)` of the bare tokenizer on instruction and output (no template, no mask): a floor.

Each row gives wall seconds and CPU seconds (`time.process_time`: every thread of this process, tokenizers' too)
and the load average around it: on a shared machine samples per CPU-second is the comparable figure. `datasets` is
imported before timing (its import, ~1 s, is paid once per command). `--only prepare` runs the first row alone, so
an older checkout (PYTHONPATH=...) can be timed for a before/after table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_memory import write_data  # noqa: E402

from glmtune.checkpoints.load import load_tokenizer  # noqa: E402
from glmtune.checkpoints.tiny import builtin_path  # noqa: E402
from glmtune.data.formats import check_record  # noqa: E402
from glmtune.families import detect_family  # noqa: E402
from glmtune.recipe import DataSection  # noqa: E402

ROWS = ("prepare", "map", "map-batched", "map-bare")


def run_prepare(path: Path, scratch: Path, family, tokenizer) -> int:
    from glmtune.data.prepare import prepare_data

    data = DataSection(train=[str(path)], max_length=64)
    return len(prepare_data(data, family, tokenizer, scratch / "prepared").splits["train"])


def run_map(path: Path, scratch: Path, family, tokenizer, *, batched: bool) -> int:
    from datasets import load_dataset

    from glmtune.data.prepare import labels_of, render_example

    data = DataSection(train=[str(path)], max_length=64)
    records = load_dataset("json", data_files=str(path), split="train", cache_dir=str(scratch / "cache"))

    def one(row, index):
        sample = render_example(check_record(row, f"{path}:{index + 1}", "alpaca"), data, family, tokenizer)
        return {"input_ids": sample.ids, "labels": labels_of(sample)}

    def many(batch, indices):
        from glmtune.data.prepare import render_examples

        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        examples = [check_record(r, f"{path}:{i + 1}", "alpaca") for r, i in zip(rows, indices, strict=True)]
        samples = [s for s in render_examples(examples, data, family, tokenizer) if s.status != "dropped"]
        return {"input_ids": [s.ids for s in samples], "labels": [labels_of(s) for s in samples]}

    mapped = records.map(many if batched else one, batched=batched, batch_size=1000, with_indices=True,
                         remove_columns=records.column_names, load_from_cache_file=False)  # fmt: skip
    return len(mapped)


def run_bare(path: Path, scratch: Path, family, tokenizer) -> int:
    from datasets import load_dataset

    records = load_dataset("json", data_files=str(path), split="train", cache_dir=str(scratch / "cache"))

    def tokenize(batch):
        prompts = tokenizer(batch["instruction"], add_special_tokens=False)["input_ids"]
        answers = tokenizer(batch["output"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [p + a for p, a in zip(prompts, answers, strict=True)]}

    mapped = records.map(tokenize, batched=True, batch_size=1000, remove_columns=records.column_names,
                         load_from_cache_file=False)  # fmt: skip
    return len(mapped)


def measure(name: str, path: Path, scratch: Path, family, tokenizer) -> None:
    runs = {
        "prepare": lambda: run_prepare(path, scratch, family, tokenizer),
        "map": lambda: run_map(path, scratch, family, tokenizer, batched=False),
        "map-batched": lambda: run_map(path, scratch, family, tokenizer, batched=True),
        "map-bare": lambda: run_bare(path, scratch, family, tokenizer),
    }
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    samples = runs[name]()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{name:12} {samples:>8,} samples  wall {wall:7.2f} s  {samples / wall:8,.0f}/s  CPU {cpu:7.2f} s  "
          f"{samples / cpu:8,.0f} per CPU-s  load {load_before:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=100_000)
    parser.add_argument("--tokenizer", type=Path, default=None, help="model folder (default: tiny GLM-4)")
    parser.add_argument("--only", choices=ROWS, action="append", help="run these rows only (repeatable)")
    args = parser.parse_args()
    folder = args.tokenizer or builtin_path("tiny-glm4")
    family = detect_family(folder)
    tokenizer = load_tokenizer(folder, family=family)
    import datasets  # noqa: F401  (paid once per command, not per sample)

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "alpaca.jsonl"
        write_data(path, args.count)
        print(f"{args.count:,} records, {folder}, {os.cpu_count()} CPUs", flush=True)
        for name in args.only or ROWS:
            with tempfile.TemporaryDirectory(dir=scratch) as run:
                measure(name, path, Path(run), family, tokenizer)


if __name__ == "__main__":
    main()
