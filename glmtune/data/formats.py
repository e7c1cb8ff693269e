"""Read training data files into conversations: alpaca, context/target, messages and sharegpt records.

Tool data is read in its usual spellings: a record's `tools` (a list, or a JSON string as LLaMA-Factory's glaive
demos store it; bare function objects are wrapped as OpenAI `{"type": "function", "function": …}` entries),
OpenAI messages (`tool_calls`, `reasoning_content`, `tool` results, a message's own `tools`), and sharegpt's
`function_call` (a JSON `{"name", "arguments"}` or a list of them) and `observation` turns.

Files are `.json` (a list of records) or `.jsonl` (one record per line), both read one record at a time; a folder
stands for the data files in it.
The format is detected per file from its first record unless the recipe names one. Placeholders are filled
from `[data] variables` (glmtune.data.placeholders). Every problem names the file and line (or record) it comes from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune.data.placeholders import fill
from glmtune.data.records import records
from glmtune.errors import UsageError
from glmtune.families import ROLES, Message
from glmtune.families.base import ToolCall

SURROGATE = re.compile(
    "[\ud800-\udfff]"
)  # json.loads lets an escaped lone surrogate through; no tokenizer takes it
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "observation": "observation",
    "function_call": "assistant",  # its value is the call: {"name": ..., "arguments": {...}}
    "tool": "observation",
}
MESSAGE_ROLES = {**{role: role for role in ROLES}, "tool": "observation"}


@dataclass(frozen=True)
class Example:
    messages: list[Message]
    origin: str  # "file:line", for messages
    tools: tuple[
        Mapping[str, Any], ...
    ] = ()  # the functions the conversation may call (OpenAI `tools` entries)
    source: str = ""  # the data source it was read from (a registry entry or a file's stem), for stats


def data_files(paths: list[str], key: str) -> list[Path]:
    """Expand the files and folders a recipe names under `key` into data files."""
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
            if not found:
                raise UsageError(f"{key}: folder {path} holds no .json or .jsonl file")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(
                f"{key}: data file {path} not found; check the path (relative paths are read from the folder of the "
                "recipe file that names them, or from the current folder when given with --set)"
            )
    return files


def read_examples(*args: Any, **kwargs: Any) -> list[Example]:
    """`iter_examples` as a list (same arguments)."""
    return list(iter_examples(*args, **kwargs))


def iter_examples(
    paths: list[str],
    key: str,
    fmt: str,
    variables: Mapping[str, str],
    system: str | None,
    *,
    placeholders: str = "{{name}}",
    transform: Callable[[dict[str, Any], str], dict[str, Any]] | None = None,
) -> Iterator[Example]:
    """The records of every file in order, one at a time: a .jsonl file of any size is never held in memory.
    `transform` maps each raw record (and its origin) to a canonical one before the format is detected (column
    mapping, see `glmtune.data.sources`)."""
    for file in data_files(paths, key):
        file_format = fmt
        for origin, record in records(file):
            if transform is not None:
                record = transform(record, origin)
            if file_format == "auto":
                file_format = detect_format(record, origin)
            yield check_record(record, origin, file_format, variables, system, placeholders)


def check_record(
    record: Mapping[str, Any],
    origin: str,
    fmt: str = "auto",
    variables: Mapping[str, str] | None = None,
    system: str | None = None,
    placeholders: str = "{{name}}",
) -> Example:
    """One record as a training example, or the UsageError `prepare` would give for it."""
    if fmt == "auto":
        fmt = detect_format(record, origin)
    try:
        filled = fill(record, variables or {}, placeholders, origin)
    except RecursionError:
        raise UsageError(f"{origin}: JSON nested too deeply to be a data record") from None
    return Example(to_messages(filled, fmt, origin, system), origin, read_tools(filled, origin))


def read_tools(record: Mapping[str, Any], origin: str) -> tuple[Mapping[str, Any], ...]:
    """The record's `tools` plus any a message carries (GLM-4's demos put them on the system message)."""
    found = [record.get("tools")] + [
        turn.get("tools") for turn in record.get("messages") or [] if isinstance(turn, dict)
    ]
    tools: list[Mapping[str, Any]] = []
    for value in found:
        if isinstance(value, str) and value.strip():
            value = _json(value, origin, "tools")
        if value in (None, "", []):
            continue
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise UsageError(
                f"{origin}: 'tools' must be a list of function objects (or that list as a JSON string)"
            )
        tools += [t if "function" in t else {"type": "function", "function": t} for t in value]
    return tuple(tools)


def _json(text: str, origin: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{origin}: {where} is not valid JSON ({exc.msg} at column {exc.colno})") from None


def tool_calls(value: Any, origin: str, where: str) -> tuple[ToolCall, ...]:
    """Calls in OpenAI's shape (`{"type": "function", "function": {"name", "arguments"}}`) or bare
    `{"name", "arguments"}`, one or a list; arguments an object or a JSON string of one."""
    if isinstance(value, str):
        value = _json(value, origin, where)
    calls = []
    for entry in value if isinstance(value, list) else [value]:
        function = entry.get("function", entry) if isinstance(entry, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UsageError(f"{origin}: {where}: each call needs a 'name' and 'arguments'")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            arguments = _json(arguments, origin, f"{where} arguments") if arguments.strip() else {}
        if not isinstance(arguments, dict):
            raise UsageError(
                f"{origin}: {where}: the arguments of {function['name']!r} must be a JSON object"
            )
        calls.append(ToolCall(function["name"], arguments))
    return tuple(calls)


def detect_format(record: Mapping[str, Any], origin: str) -> str:
    turns = record.get("messages", record.get("conversations"))
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        return "sharegpt" if "from" in turns[0] else "messages"
    if "instruction" in record:
        return "alpaca"
    if "context" in record or "target" in record:
        return "context_target"
    raise UsageError(
        f"{origin}: cannot tell the data format from keys {sorted(record)}; "
        "use alpaca (instruction/output), context/target, messages or sharegpt records, or set data.format"
    )


def to_messages(record: Mapping[str, Any], fmt: str, origin: str, system: str | None) -> list[Message]:
    builders = {
        "alpaca": _alpaca,
        "context_target": _context_target,
        "messages": _messages,
        "sharegpt": _sharegpt,
    }
    messages = builders[fmt](record, origin)
    if system and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", system))
    if not messages or messages[-1].role != "assistant":
        raise UsageError(f"{origin}: the conversation must end with an assistant answer")
    last = messages[-1]
    if not last.content.strip() and not last.tool_calls and not last.reasoning_content:
        raise UsageError(f"{origin}: empty answer; remove the record or write its answer")
    return messages


def _field(record: Mapping[str, Any], key: str, origin: str, fmt: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise UsageError(f"{origin}: missing field '{key}' (format {fmt})")
        return ""
    if not isinstance(value, str):
        raise UsageError(f"{origin}: field '{key}' must be a string, got {type(value).__name__}")
    return _text(value, origin, f"field '{key}'")


def _text(value: Any, origin: str, where: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{origin}: {where} must be a string, got {type(value).__name__}")
    if SURROGATE.search(value):
        raise UsageError(
            f"{origin}: {where} holds a lone UTF-16 surrogate (an escape such as \\ud800); not text"
        )
    return value


def _alpaca(record: Mapping[str, Any], origin: str) -> list[Message]:
    messages = []
    if system := _field(record, "system", origin, "alpaca", required=False):
        messages.append(Message("system", system))
    history = record.get("history") or []
    if not isinstance(history, list) or any(not isinstance(p, list) or len(p) != 2 for p in history):
        raise UsageError(f"{origin}: field 'history' must be a list of [user, assistant] pairs")
    for user, assistant in history:
        messages += [
            Message("user", _text(user, origin, "history")),
            Message("assistant", _text(assistant, origin, "history")),
        ]
    prompt = _field(record, "instruction", origin, "alpaca")
    if extra := _field(record, "input", origin, "alpaca", required=False):
        prompt = f"{prompt}\n{extra}" if prompt else extra
    messages += [Message("user", prompt), Message("assistant", _field(record, "output", origin, "alpaca"))]
    return messages


def _context_target(record: Mapping[str, Any], origin: str) -> list[Message]:
    context = _field(record, "context", origin, "context_target")
    return [
        Message("user", context),
        Message("assistant", _field(record, "target", origin, "context_target")),
    ]


def _turns(record: Mapping[str, Any], origin: str, fmt: str) -> list[Any]:
    turns = record.get("messages", record.get("conversations"))
    if not isinstance(turns, list) or not turns:
        raise UsageError(
            f"{origin}: missing field 'messages' (or 'conversations'), a non-empty list (format {fmt})"
        )
    return turns


def _messages(record: Mapping[str, Any], origin: str) -> list[Message]:
    return _conversation(record, origin, "messages", ("role", "content"), MESSAGE_ROLES)


def _sharegpt(record: Mapping[str, Any], origin: str) -> list[Message]:
    return _conversation(record, origin, "sharegpt", ("from", "value"), SHAREGPT_ROLES)


def _conversation(
    record: Mapping[str, Any], origin: str, fmt: str, keys: tuple[str, str], roles: Mapping[str, str]
) -> list[Message]:
    """Turns of a messages/sharegpt record; `keys` names its speaker and text fields."""
    speaker, text = keys
    messages: list[Message] = []
    for turn in _turns(record, origin, fmt):
        if (
            not isinstance(turn, dict)
            or speaker not in turn
            or (text not in turn and not turn.get("tool_calls"))
        ):
            raise UsageError(f"{origin}: each {fmt} turn needs '{speaker}' and '{text}'")
        role = roles.get(turn[speaker]) if isinstance(turn[speaker], str) else None
        if role is None:
            raise UsageError(f"{origin}: unknown {speaker} {turn[speaker]!r}; use one of {', '.join(roles)}")
        messages.append(_message(turn, role, keys, origin, f"{fmt}[{len(messages)}]"))
    return messages


def _message(turn: Mapping[str, Any], role: str, keys: tuple[str, str], origin: str, where: str) -> Message:
    """One turn; a sharegpt `function_call` turn's value is the call, an OpenAI turn's calls are `tool_calls`."""
    speaker, text_key = keys
    value = turn.get(text_key)
    calls: tuple[ToolCall, ...] = ()
    if turn[speaker] == "function_call":
        calls, value = tool_calls(value, origin, f"{where}.value"), ""
    elif turn.get("tool_calls"):
        calls = tool_calls(turn["tool_calls"], origin, f"{where}.tool_calls")
    content = "" if value is None and calls else _text(value, origin, f"{where}.{text_key}")
    reasoning = turn.get("reasoning_content")
    if reasoning is not None and (role != "assistant" or not isinstance(reasoning, str)):
        raise UsageError(f"{origin}: {where}.reasoning_content must be a string on an assistant turn")
    metadata = _text(turn.get("metadata") or "", origin, "metadata")
    return Message(role, content, metadata, reasoning_content=reasoning, tool_calls=calls)
