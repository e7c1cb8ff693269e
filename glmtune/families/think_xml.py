"""The `<think>` + XML tool-call chat format of GLM-4.5 and later, as one layout parametrised by `ThinkXmlFormat`.

The official `chat_template.jinja` files of GLM-4.5/4.6, GLM-4.7(-Flash), GLM-5.1, GLM-5.2 and GLM-5.3-Flash share
one structure and differ in a handful of facts, each a field of `ThinkXmlFormat` (the family modules fill them in):
newlines after the role tags (4.5 only), `/nothink` on user turns, what a turn whose reasoning is not shown renders,
the generation prompt, whether reasoning is stripped, how tools are listed and a `Reasoning Effort` system turn.

What is trained (the model's own tokens and the token that ends its turn): in an assistant turn the reasoning with
its `</think>`, the content, the calls, and the next `<|user|>`/`<|observation|>` (appended after the last turn);
never the role tag, never the `<think>` the generation prompt writes (GLM-4.7 and later open the reply with it;
GLM-4.5's model writes `\\n<think>` itself). An answer without reasoning after the last user message, thinking on,
trains the rest of its empty think block (its `</think>`): the model must learn to close an empty thought; empty
blocks of history turns, and every block with thinking off (the generation prompt then writes it), are not trained.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from glmtune.errors import UsageError
from glmtune.families.base import Message, Piece, RenderOptions, ToolCall

# The added tokens of every GLM-4.5+ tokenizer, in id order (151329-151364 up to GLM-4.7, 154820-154855 from
# GLM-4.7-Flash on: the same names in the same order, per the shipped tokenizer_config.json files).
ADDED_TOKENS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
    "<|begin_of_transcription|>",
    "<|end_of_transcription|>",
    "<|code_prefix|>",
    "<|code_middle|>",
    "<|code_suffix|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "/nothink",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "<|image|>",
    "<|video|>",
)
# eos ids [151329, 151336, 151338] / [154820, 154827, 154829] of the shipped configs, by name
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
TURN_END_NOTE = (
    "an assistant turn ends with the next <|user|> or <|observation|> (appended after the last turn: <|observation|> "
    "after a tool call, else <|user|>); trained are its reasoning with </think>, content and calls, never an empty "
    "think block or the <think> the generation prompt writes"
)
TAGS = (
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "<tool_response>",
    "</tool_response>",
)
_TAG_SPLIT = re.compile("(" + "|".join(re.escape(tag) for tag in TAGS) + ")")


@dataclass(frozen=True)
class ThinkXmlFormat:
    """The facts in which the GLM-4.5+ templates differ (comments name the templates that set them)."""

    family: str  # the record's name, for messages
    role_newline: bool  # 4.5/4.6: "\n" after each role tag and before each think/content/call/result block
    nothink_suffix: bool  # 4.5/4.6: with thinking off every user turn ends with `/nothink`
    hidden_think: str  # what a turn whose reasoning is not shown renders (after 4.5's newline)
    prompt_think: tuple[str, str]  # after the generation prompt's <|assistant|>: (thinking on, thinking off)
    raw_reasoning: bool  # 5.x: reasoning rendered as given (not stripped), shown even when empty
    tools_as_functions: bool  # 5.x: tools listed as bare function objects, without defer_loading/strict
    effort_system: bool = False  # 5.2/5.3: the prompt opens with `<|system|>Reasoning Effort: Max`
    effort_needs_thinking: bool = True  # 5.2: that system turn only with thinking on; 5.3: always
    empty_recent_reasoning: bool = False  # 5.1: turns without reasoning may still show an empty think block
    has_clear_thinking: bool = True  # the template reads `clear_thinking` (4.7 and later)
    has_thinking_switch: bool = True  # the template reads `enable_thinking` (all but 5.3-Flash)


def layout(fmt: ThinkXmlFormat, messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    """Pieces of a conversation exactly as the format's official template renders it as text."""
    _check_options(fmt, options)
    messages = [_with_tool_calls(fmt, index, message) for index, message in enumerate(messages)]
    pieces = [Piece("[gMASK]", special=True), Piece("<sop>", special=True)]
    if fmt.effort_system and (options.enable_thinking or not fmt.effort_needs_thinking):
        pieces += [Piece("<|system|>", special=True), Piece("Reasoning Effort: Max")]
    if options.tools:
        pieces += [Piece("<|system|>", special=True), *_tagged(tools_text(fmt, options.tools))]
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    previous_turn = -1  # the assistant message whose turn the next role tag ends, if any
    for index, message in enumerate(messages):
        follows_result = message.role == "observation" and index and messages[index - 1].role == "observation"
        if not follows_result:  # consecutive results share one <|observation|>
            ends = message.role in ("user", "observation") and previous_turn >= 0
            pieces.append(Piece(f"<|{message.role}|>", special=True, train=ends, turn=previous_turn))
        if message.role == "assistant":
            pieces += _assistant(fmt, messages, index, last_user, options)
        else:
            pieces += _other(fmt, message, options)
        previous_turn = index if message.role == "assistant" else -1
    if previous_turn >= 0:
        end = "<|observation|>" if messages[previous_turn].tool_calls else "<|user|>"
        pieces.append(Piece(end, special=True, train=True, turn=previous_turn, appended=True))
    elif options.add_generation_prompt:
        think = fmt.prompt_think[0 if options.enable_thinking else 1]
        pieces += [
            Piece("<|assistant|>", special=True),
            *(replace(p, opens_reply=True) for p in _tagged(think)),
        ]
    return _merged(pieces)


def _with_tool_calls(fmt: ThinkXmlFormat, index: int, message: Message) -> Message:
    """A GLM-4-style call (metadata = function name, content = JSON arguments) as the `tool_calls` it means."""
    if not message.metadata or message.tool_calls:
        return message
    try:
        arguments = json.loads(message.content)
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise UsageError(
            f"{fmt.family}: message {index + 1} has metadata {message.metadata!r} (a GLM-4-style call) but its "
            "content is not a JSON object of arguments; write the call as tool_calls"
        )
    return Message(
        message.role,
        "",
        reasoning_content=message.reasoning_content,
        tool_calls=(ToolCall(message.metadata, arguments),),
    )


def _other(fmt: ThinkXmlFormat, message: Message, options: RenderOptions) -> list[Piece]:
    """A system, user or tool-result message after its role tag."""
    nl = "\n" if fmt.role_newline else ""
    if message.role == "observation":
        return [
            Piece(nl),
            Piece("<tool_response>", special=True),
            Piece(f"{nl}{message.content}{nl}"),
            Piece("</tool_response>", special=True),
        ]
    if message.role == "user":
        return _user(fmt, message.content, options)
    return [Piece(nl + message.content)]


def _merged(pieces: list[Piece]) -> list[Piece]:
    """Adjacent texts joined: the tokenizer encodes everything between two tags as one text."""
    merged: list[Piece] = []
    for piece in pieces:
        if not piece.text:
            continue
        last = merged[-1] if merged else None
        if (
            last
            and not last.special
            and not piece.special
            and (last.train, last.turn) == (piece.train, piece.turn)
        ):
            merged[-1] = replace(last, text=last.text + piece.text)
        else:
            merged.append(piece)
    return merged


def _check_options(fmt: ThinkXmlFormat, options: RenderOptions) -> None:
    if not options.clear_thinking and not fmt.has_clear_thinking:
        raise UsageError(
            f"{fmt.family}: its template always clears past reasoning (it has no clear_thinking); "
            'set data.thinking = "template" or "off"'
        )
    if not options.enable_thinking and not fmt.has_thinking_switch:
        raise UsageError(
            f'{fmt.family}: its template always thinks (no enable_thinking); set data.thinking = "template"'
        )


def _user(fmt: ThinkXmlFormat, content: str, options: RenderOptions) -> list[Piece]:
    text = ("\n" if fmt.role_newline else "") + content
    if not fmt.nothink_suffix:
        return [Piece(text)]
    if text.endswith("/nothink"):  # the user's own switch: one special token, as the tokenizer reads it
        return [Piece(text[: -len("/nothink")]), Piece("/nothink", special=True)]
    return [Piece(text), *([Piece("/nothink", special=True)] if not options.enable_thinking else [])]


def _assistant(
    fmt: ThinkXmlFormat, messages: Sequence[Message], index: int, last_user: int, options: RenderOptions
) -> list[Piece]:
    message = messages[index]
    reasoning, content = split_reasoning(fmt, message)
    recent = index > last_user
    if (
        reasoning is None
        and fmt.empty_recent_reasoning
        and _implies_empty_reasoning(messages, index, last_user, options)
    ):
        reasoning = ""
    shown = (not options.clear_thinking or recent) and (
        reasoning is not None if fmt.raw_reasoning else bool(reasoning)
    )
    nl = "\n" if fmt.role_newline else ""
    text = (reasoning if fmt.raw_reasoning else reasoning.strip()) if shown and reasoning is not None else ""
    if text.strip():
        # GLM-4.7+'s generation prompt writes the <think>, so the model does not; GLM-4.5's model writes it
        prompt_opens = fmt.prompt_think[0] == "<think>"
        pieces = [
            Piece(nl, train=True),
            Piece("<think>", special=True, train=not prompt_opens),
            Piece(text, train=True),
            Piece("</think>", special=True, train=True),
        ]
    else:  # an empty (or whitespace) think block, or the hidden form
        pieces = _tagged(nl + (f"<think>{text}</think>" if shown else fmt.hidden_think))
        if recent and options.enable_thinking:
            pieces = _written_after_prompt(fmt, pieces)
    if content.strip():
        pieces.append(Piece(nl + content.strip(), train=True))
    for call in message.tool_calls:
        pieces += [Piece(p.text, p.special, train=True) for p in _tagged(call_text(fmt, call))]
    return [Piece(p.text, p.special, p.train, index if p.train else -1) for p in pieces]


def _written_after_prompt(fmt: ThinkXmlFormat, pieces: list[Piece]) -> list[Piece]:
    """A recent turn's empty think block with thinking on: the model writes it after the generation prompt (which
    may open it with `<think>`), so that part is trained and the model learns to close an empty thought; trained
    nowhere, a tuned model would think on (or never stop thinking) where its data answered directly. As
    LLaMA-Factory's ReasoningTemplate with enable_thinking; in past turns the block is history, untrained."""
    opened = _tagged(fmt.prompt_think[0])
    skip = len(opened) if [p.text for p in pieces[: len(opened)]] == [p.text for p in opened] else 0
    return pieces[:skip] + [replace(p, train=True) for p in pieces[skip:]]


def split_reasoning(fmt: ThinkXmlFormat, message: Message) -> tuple[str | None, str]:
    """(reasoning or None, content) as the template reads them: the `reasoning_content` field, else an inline
    `<think>…</think>` at the start of the content."""
    content = message.content
    if message.reasoning_content is not None:
        return message.reasoning_content, content
    if "</think>" not in content:
        return (None if fmt.raw_reasoning else ""), content
    head, tail = content.split("</think>")[0], content.split("</think>")[-1]
    if fmt.raw_reasoning:
        return head.split("<think>")[-1], tail
    return head.rstrip("\n").split("<think>")[-1].lstrip("\n"), tail.lstrip("\n")


def _implies_empty_reasoning(
    messages: Sequence[Message], index: int, last_user: int, options: RenderOptions
) -> bool:
    """GLM-5.1: a turn without reasoning still has an (empty) one after the last user turn with thinking on, and
    before it when its user round holds a turn with a `reasoning_content` field."""
    if index > last_user:
        return options.enable_thinking
    return index < last_user and _round_has_reasoning(messages, index)


def _round_has_reasoning(messages: Sequence[Message], index: int) -> bool:
    """GLM-5.1: does the user round of message `index` hold an assistant turn with a `reasoning_content` field?"""
    start = max((i for i in range(index) if messages[i].role == "user"), default=-1)
    if start < 0:
        return False
    end = next((i for i in range(start + 1, len(messages)) if messages[i].role == "user"), len(messages))
    return any(m.role == "assistant" and m.reasoning_content is not None for m in messages[start:end])


def call_text(fmt: ThinkXmlFormat, call: ToolCall) -> str:
    nl = "\n" if fmt.role_newline else ""
    args = "".join(
        f"<arg_key>{key}</arg_key>{nl}<arg_value>{_value(value)}</arg_value>{nl}"
        for key, value in call.arguments.items()
    )
    return f"{nl}<tool_call>{call.name}{nl}{args}</tool_call>"


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def tools_text(fmt: ThinkXmlFormat, tools: Sequence[Mapping[str, Any]]) -> str:
    if fmt.tools_as_functions:
        listed = [
            _function_json(t) for t in (t.get("function", t) for t in tools) if not t.get("defer_loading")
        ]
    else:
        listed = [json.dumps(tool, ensure_ascii=False) for tool in tools]
    example = (
        "<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}</arg_value>\n"
        "<arg_key>{arg-key-2}</arg_key>\n<arg_value>{arg-value-2}</arg_value>\n...\n</tool_call>"
    )
    return (
        "\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + "".join(f"{line}\n" for line in listed)
        + "</tools>\n\nFor each function call, output the function name and arguments within the following XML "
        "format:\n" + (example if fmt.role_newline else example.replace("\n", ""))
    )


def _function_json(function: Mapping[str, Any]) -> str:
    fields = (
        f'"{k}": {json.dumps(v, ensure_ascii=False)}'
        for k, v in function.items()
        if k not in ("defer_loading", "strict")
    )
    return "{" + ", ".join(fields) + "}"


def _tagged(text: str) -> list[Piece]:
    """`text` split at the format's tags, each tag a token of its own (as the tokenizer's added tokens are)."""
    return [Piece(part, special=part in TAGS) for part in _TAG_SPLIT.split(text) if part]


_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def parse_reply(text: str, tools: Sequence[Mapping[str, Any]] = ()) -> tuple[str, str | None, list[ToolCall]]:
    """(content, reasoning_content, tool_calls) of a generated reply in this format (what follows `<|assistant|>`,
    with or without the generation prompt's `<think>`). Argument values are JSON where they parse as JSON, unless
    the tool's schema declares the argument a string (the template writes strings unquoted)."""
    reasoning = None
    if "</think>" in text:
        head, text = text.split("</think>", 1)
        reasoning = head.split("<think>")[-1].strip()
    calls = [_parse_call(body, tools) for body in _CALL.findall(text)]
    content = _CALL.sub("", text).strip()
    return content, reasoning or None, calls


def partial_reply(text: str) -> tuple[str, str | None]:
    """Content and reasoning of an unfinished reply: an open think block is reasoning so far; content stops at the
    first `<tool_call>` (its calls are parsed once the reply is complete)."""
    opened, marker, after = text.partition("<think>")
    if marker and opened.strip() == "" and "</think>" not in after:
        return "", after.strip() or None
    content, reasoning, _ = parse_reply(text.split("<tool_call>")[0])
    return content, reasoning


def _parse_call(body: str, tools: Sequence[Mapping[str, Any]]) -> ToolCall:
    name = body.split("<arg_key>")[0].strip()
    schema: Mapping[str, Any] = next(
        (t.get("function", t) for t in tools if t.get("function", t).get("name") == name), {}
    )
    properties = schema.get("parameters", {}).get("properties", {})
    arguments: dict[str, Any] = {}
    for key, raw in _ARG.findall(body):
        arguments[key] = raw if properties.get(key, {}).get("type") == "string" else _json_or_text(raw)
    return ToolCall(name, arguments)


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
