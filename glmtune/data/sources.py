"""Data sources: the files and LLaMA-Factory `dataset_info.json` entries a recipe names, mapped to canonical records,
held out for eval and mixed.

A source is a data file or folder (named after its stem) or an entry of `[data] registry`. Column mapping uses
LLaMA-Factory's vocabulary (`columns`: prompt, query, response, system, history, messages, tools; `tags`: role_tag,
content_tag, user_tag, assistant_tag, observation_tag, function_tag, system_tag) and turns a raw record into a
canonical alpaca or sharegpt record before the format is detected. The eval split is drawn from the train sources
before mixing, so no eval record is also trained on; `[data] mix` then draws each source's share of the train split.
Both are seeded by `[data] seed`, and what was drawn is returned for the run directory's `sources.json`.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from glmtune.data.formats import Example, data_files, iter_examples
from glmtune.data.placeholders import Scan
from glmtune.errors import UsageError
from glmtune.recipe import COLUMN_NAMES, TAG_NAMES, DataSection, MixEntry, is_source_name

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
ALPACA_OPTIONAL = {"system": "system", "history": "history", "tools": "tools"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


@dataclass(frozen=True)
class Source:
    name: str
    paths: list[str]
    formatting: str  # "alpaca"/"sharegpt" when columns map the records, else a glmtune format or "auto"
    columns: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    mapped: bool = False  # records go through the column mapping
    samples: int | None = None  # a registry entry's num_samples


@dataclass
class Splits:
    """The train and eval examples. They stream from the files (one record in memory at a time) unless mixing or
    an eval split needs them all at once; `sources` and `warnings` are complete once both have been consumed."""

    train: Iterable[Example]
    eval: Iterable[Example]
    sources: list[dict[str, Any]]  # per source: what was read, held out and drawn (for sources.json)
    scan: Scan
    has_eval: bool  # an eval split: eval files, or records held out from train

    @property
    def warnings(self) -> list[str]:
        return self.scan.warnings("data")


def read_splits(data: DataSection) -> Splits:
    """Train and eval examples as the recipe describes them: sources read, eval held out, train mixed."""
    if not data.train:
        raise UsageError(
            "data.train: no training data; list .json/.jsonl files or folders, or registry entries"
        )
    scan = Scan(data.placeholders)
    train_sources = sources_of(data.train, "data.train", data)
    _check_mix(data, train_sources)
    eval_sources = sources_of(data.eval, "data.eval", data)
    streamed_eval = (e for source in eval_sources for e in iter_source(source, "data.eval", data, scan))
    if not _needs_lists(data, train_sources):
        record = [_describe(source, 0, 0, 0, None) for source in train_sources]
        return Splits(
            _stream(train_sources, record, data, scan), streamed_eval, record, scan, bool(eval_sources)
        )
    per_source = {source.name: read_source(source, "data.train", data, scan) for source in train_sources}
    held = _hold_out(per_source, data)
    record = []
    train: list[Example] = []
    for source in train_sources:
        kept = [e for e in per_source[source.name] if e.origin not in held]
        drawn = mix_draw(kept, data.mix.get(source.name), source, data.seed)
        train += drawn
        record.append(
            _describe(
                source,
                len(per_source[source.name]),
                len(per_source[source.name]) - len(kept),
                len(drawn),
                data.mix.get(source.name),
            )
        )
    held_out = [e for examples in per_source.values() for e in examples if e.origin in held]
    return Splits(
        train, itertools.chain(held_out, streamed_eval), record, scan, bool(held_out or eval_sources)
    )


def _needs_lists(data: DataSection, sources: list[Source]) -> bool:
    """Mixing and holding out draw from whole sources; everything else streams."""
    return (
        bool(data.mix)
        or data.eval_fraction is not None
        or data.eval_count is not None
        or any(source.samples is not None for source in sources)
    )


def _stream(
    sources: list[Source], record: list[dict[str, Any]], data: DataSection, scan: Scan
) -> Iterator[Example]:
    for source, described in zip(sources, record, strict=True):
        for example in iter_source(source, "data.train", data, scan):
            described["records"] += 1
            described["drawn"] += 1
            yield example


def examples_of(entries: list[str], key: str, data: DataSection) -> list[Example]:
    """The examples of files or registry entries named under `key` (e.g. eval.data), mapped like training data."""
    scan = Scan(data.placeholders)
    return [e for source in sources_of(entries, key, data) for e in read_source(source, key, data, scan)]


def sources_of(entries: list[str], key: str, data: DataSection) -> list[Source]:
    registry: dict[str, Any] | None = None
    sources, files = [], []
    for entry in entries:
        if is_source_name(entry) and not Path(entry).is_absolute():
            if data.registry is None:
                raise UsageError(
                    f"{key}: {entry!r} is neither a data file nor a folder next to the recipe; "
                    "to name a dataset_info.json entry, set data.registry"
                )
            registry = registry if registry is not None else load_registry(data.registry)
            sources.append(registry_source(entry, registry, data.registry, key))
        else:
            mapped = bool(data.columns or data.tags)
            formatting = _mapped_format(data.format, data.columns, data.tags) if mapped else data.format
            files.append(len(sources))
            sources.append(Source(Path(entry).stem, [entry], formatting, data.columns, data.tags, mapped))
    return _distinct_names(sources, files, key)


def _distinct_names(sources: list[Source], files: list[int], key: str) -> list[Source]:
    """Files (`sources[i]` for i in `files`) are named by their stem, and files of the same stem in other folders
    by as much of their path as tells them apart ("zh/train", "en/train"). The same file twice is refused."""
    paths = [sources[i].paths[0] for i in files]
    if repeated := next((path for path in paths if paths.count(path) > 1), None):
        raise UsageError(
            f"{key}: {repeated} is listed twice; to read it more often, give it a weight under [data.mix] "
            f"({Path(repeated).stem} = {{ weight = 2.0 }})"
        )
    named = list(sources)
    for depth in range(1, 1 + max((len(Path(path).parts) for path in paths), default=0)):
        names = [source.name for source in named]
        clashing = {i for i in files if names.count(named[i].name) > 1}
        if not clashing:
            break
        named = [
            replace(s, name=_tail(s.paths[0], depth)) if i in clashing else s for i, s in enumerate(named)
        ]
    names = [source.name for source in named]
    if duplicate := next((name for name in names if names.count(name) > 1), None):
        raise UsageError(
            f"{key}: two sources are named {duplicate!r}; rename the data file or the registry entry"
        )
    return named


def _tail(path: str, depth: int) -> str:
    """The stem of `path` with its `depth` nearest folders: ("data/zh/train.jsonl", 1) -> "zh/train"."""
    return "/".join(Path(path).with_suffix("").parts[-depth - 1 :])


def _mapped_format(fmt: str, columns: Mapping[str, str], tags: Mapping[str, str]) -> str:
    if fmt in ("alpaca", "sharegpt"):
        return fmt
    if fmt != "auto":
        raise UsageError(f"data.columns/data.tags map records to alpaca or sharegpt; data.format is {fmt!r}")
    return "sharegpt" if tags or "messages" in columns else "alpaca"


def load_registry(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"data.registry: {file} not found; give the path of a dataset_info.json")
    try:
        registry = json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(registry, dict) or not all(isinstance(v, dict) for v in registry.values()):
        raise UsageError(f"{file}: a dataset_info.json maps dataset names to objects")
    return registry


def registry_source(name: str, registry: Mapping[str, Any], registry_path: str, key: str) -> Source:
    """The source a dataset_info.json entry describes; hub, script and preference entries are refused."""
    if name not in registry:
        raise UsageError(
            f"{key}: {registry_path} has no entry {name!r}; it has {', '.join(sorted(registry))}"
        )
    entry = registry[name]
    where = f"{registry_path} entry {name!r}"
    if hub := next((k for k in HUB_KEYS if entry.get(k)), None):
        raise UsageError(
            f"{where}: {hub} is remote; glmtune reads local files only: download the data "
            "yourself and give the entry a file_name"
        )
    if entry.get("ranking"):
        raise UsageError(
            f"{where}: ranking (preference) data needs preference training, which glmtune does not "
            f"have yet; remove {name!r} from {key}"
        )
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise UsageError(f"{where}: formatting {formatting!r}; glmtune reads alpaca and sharegpt entries")
    if not isinstance(entry.get("file_name"), str):
        raise UsageError(f"{where}: no file_name; name the data file (relative to {registry_path})")
    columns = _names(entry.get("columns", {}), COLUMN_NAMES, f"{where}: columns")
    tags = _names(entry.get("tags", {}), TAG_NAMES, f"{where}: tags")
    samples = entry.get("num_samples")
    if samples is not None and (not isinstance(samples, int) or samples <= 0):
        raise UsageError(f"{where}: num_samples must be a positive whole number")
    path = str(Path(registry_path).parent / entry["file_name"])
    return Source(name, [path], formatting, columns, tags, mapped=True, samples=samples)


def _names(value: Any, allowed: tuple[str, ...], where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UsageError(f"{where}: expected an object of strings")
    if unknown := sorted(set(value) - set(allowed)):
        raise UsageError(f"{where}: unknown {', '.join(unknown)}; use {', '.join(allowed)}")
    return value


def read_source(source: Source, key: str, data: DataSection, scan: Scan) -> list[Example]:
    return list(iter_source(source, key, data, scan))


def iter_source(source: Source, key: str, data: DataSection, scan: Scan) -> Iterator[Example]:
    """The examples of one source, one at a time, column-mapped and scanned for unfilled placeholders."""

    def transform(record: dict[str, Any], origin: str) -> dict[str, Any]:
        if source.mapped:
            record = canonical_record(record, origin, source)
        scan.add(record, origin)
        return record

    fmt = "auto" if source.mapped else source.formatting
    for example in iter_examples(
        source.paths,
        key,
        fmt,
        data.variables,
        data.system,
        placeholders=data.placeholders,
        transform=transform,
    ):
        yield replace(example, source=source.name)


def canonical_record(record: Mapping[str, Any], origin: str, source: Source) -> dict[str, Any]:
    """A raw record as a canonical alpaca (instruction/input/output) or sharegpt (conversations) record."""
    if source.formatting == "sharegpt":
        return _sharegpt_record(record, origin, source)
    columns = {**ALPACA_COLUMNS, **source.columns}
    canonical: dict[str, Any] = {}
    for name, target in {**ALPACA_COLUMNS, **ALPACA_OPTIONAL}.items():
        column = columns.get(name)
        if column is not None and column in record:
            canonical[target] = record[column]
        elif name in ("prompt", "response"):
            raise UsageError(
                f"{origin}: no column {column!r} for the {name} (columns.{name}); "
                f"the record has {', '.join(sorted(record))}"
            )
    return canonical


def _sharegpt_record(record: Mapping[str, Any], origin: str, source: Source) -> dict[str, Any]:
    column = source.columns.get("messages", "conversations")
    turns = record.get(column)
    if not isinstance(turns, list) or not turns:
        raise UsageError(f"{origin}: no column {column!r} holding a list of turns (columns.messages)")
    tags = {**SHAREGPT_TAGS, **source.tags}
    roles = {
        tags[f"{role}_tag"]: canonical
        for role, canonical in (
            ("user", "human"),
            ("assistant", "gpt"),
            ("observation", "observation"),
            ("function", "function_call"),
            ("system", "system"),
        )
    }
    conversations = []
    if (system := source.columns.get("system")) and record.get(system):
        conversations.append({"from": "system", "value": record[system]})
    for turn in turns:
        if not isinstance(turn, dict) or tags["role_tag"] not in turn or tags["content_tag"] not in turn:
            raise UsageError(
                f"{origin}: each turn needs {tags['role_tag']!r} and {tags['content_tag']!r} (tags)"
            )
        role = roles.get(turn[tags["role_tag"]])
        if role is None:
            raise UsageError(
                f"{origin}: {tags['role_tag']} {turn[tags['role_tag']]!r} is none of the tags' roles "
                f"({', '.join(roles)}); set data.tags"
            )
        conversations.append({"from": role, "value": turn[tags["content_tag"]]})
    canonical: dict[str, Any] = {"conversations": conversations}
    if (tools := source.columns.get("tools")) and record.get(tools):
        canonical["tools"] = record[tools]
    return canonical


def _check_mix(data: DataSection, sources: list[Source]) -> None:
    names = {source.name for source in sources}
    if unknown := sorted(set(data.mix) - names):
        raise UsageError(
            f"data.mix.{unknown[0]}: no train source of that name; sources: {', '.join(sorted(names))}"
        )


def _hold_out(per_source: Mapping[str, list[Example]], data: DataSection) -> set[str]:
    """Origins of the records held out for eval: a seeded sample over all train sources."""
    if data.eval_fraction is None and data.eval_count is None:
        return set()
    origins = [e.origin for examples in per_source.values() for e in examples]
    count = (
        data.eval_count if data.eval_count is not None else round(len(origins) * (data.eval_fraction or 0))
    )
    key = "data.eval_count" if data.eval_count is not None else "data.eval_fraction"
    if count < 1 or count >= len(origins):
        raise UsageError(
            f"{key}: holds out {count} of {len(origins)} records; keep at least one for each split"
        )
    return set(random.Random(f"{data.seed}:eval").sample(origins, count))


def mix_draw(examples: list[Example], mix: MixEntry | None, source: Source, seed: int) -> list[Example]:
    """A source's share of the train split: whole passes then a sample of the rest, or draws with replacement."""
    if mix is None and source.samples is None:
        return examples
    amount = (mix.samples or round((mix.weight or 0) * len(examples))) if mix else (source.samples or 0)
    if amount < 1 or not examples:
        raise UsageError(f"data.mix.{source.name}: draws no records from {len(examples)}; raise it")
    rng = random.Random(f"{seed}:{source.name}")
    if mix is not None and mix.replace:
        indices = rng.choices(range(len(examples)), k=amount)
    else:
        passes, rest = divmod(amount, len(examples))
        indices = list(range(len(examples))) * passes + rng.sample(range(len(examples)), rest)
    return [examples[i] for i in sorted(indices)]


def _describe(source: Source, read: int, held_out: int, drawn: int, mix: MixEntry | None) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": source.name,
        "files": source.paths,
        "records": read,
        "held_out": held_out,
        "drawn": drawn,
    }
    if mix is not None:
        described["mix"] = mix.model_dump(exclude_none=True)
    elif source.samples is not None:
        described["mix"] = {"samples": source.samples, "from": "num_samples"}
    return described


def source_files(data: DataSection) -> list[Path]:
    """Every file whose bytes shape the prepared data: the registry and the data files of all sources."""
    files = [Path(data.registry)] if data.registry else []
    for key, entries in (("data.train", data.train), ("data.eval", data.eval)):
        for source in sources_of(entries, key, data):
            files += data_files(source.paths, key)
    return files
