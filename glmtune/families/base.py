"""The shapes every family module fills in: messages, rendered pieces and the `Family` record, plus the layout
helpers several families share. No family names live here."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError

ROLES = ("system", "user", "assistant", "observation")  # observation: a tool result (OpenAI's "tool" role)
FAMILY_KEY = "glmtune_family"  # written into config.json by `glmtune convert` and `glmtune export`


@dataclass(frozen=True)
class ToolCall:
    """One function call of an assistant turn (OpenAI's `tool_calls[i].function`)."""

    name: str
    arguments: Mapping[str, Any]  # a JSON object: argument name -> value


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str
    metadata: str = (
        ""  # GLM-4/ChatGLM3 tool-call line: the function name of an assistant call (content: arguments)
    )
    reasoning_content: str | None = (
        None  # the assistant's reasoning; None: not given (content may hold <think>…)
    )
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class RenderOptions:
    """What a layout renders besides the messages; the thinking switches are the official templates' own."""

    add_generation_prompt: bool = False
    tools: tuple[Mapping[str, Any], ...] = ()  # the conversation's function list (OpenAI `tools` entries)
    enable_thinking: bool = True  # the templates' `enable_thinking`
    clear_thinking: bool = (
        True  # the templates' `clear_thinking`: reasoning before the last user turn is dropped
    )


@dataclass(frozen=True)
class Piece:
    """One piece of a rendered conversation: a special token (by name) or text, and whether it is trained.

    Text pieces are encoded one by one, so a layout splits text exactly where the original encodes separately.
    """

    text: str
    special: bool = False
    train: bool = False
    turn: int = -1  # index of the assistant message this trained piece belongs to (for mask_history)
    appended: bool = False  # not in the template's text: the token that ends the conversation's last turn
    opens_reply: bool = False  # generation prompt text the reply continues (e.g. `<think>`): parsed with it


Layout = Callable[[Sequence[Message], RenderOptions], list[Piece]]
# (reply text after `<|assistant|>`, the conversation's tools) -> (content, reasoning_content or None, tool_calls)
ReplyParser = Callable[[str, Sequence[Mapping[str, Any]]], tuple[str, "str | None", list[ToolCall]]]


@dataclass(frozen=True)
class FolderFacts:
    """What detection reads of a checkpoint folder, read once: config.json, tokenizer_config.json, the shipped chat
    template (tokenizer_config.json "chat_template" or chat_template.jinja; "" when none), the file names, and the
    text where the tokenizer declares its special tokens (`declares`)."""

    folder: Path
    config: Mapping[str, Any]
    tokenizer_config: Mapping[str, Any]
    chat_template: str
    files: frozenset[str]
    tokenizer_text: str = ""  # tokenizer_config.json less its chat template, then the remote tokenizer module

    @classmethod
    def read(cls, folder: Path) -> FolderFacts:
        tokenizer_config = read_json(folder / "tokenizer_config.json", required=False)
        template = tokenizer_config.get("chat_template")
        jinja = folder / "chat_template.jinja"
        if not isinstance(template, str) and jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
        return cls(
            folder=folder,
            config=read_json(folder / "config.json"),
            tokenizer_config=tokenizer_config,
            chat_template=template if isinstance(template, str) else "",
            files=frozenset(p.name for p in folder.iterdir()),
            tokenizer_text=_tokenizer_text(folder, tokenizer_config),
        )

    def declares(self, token: str) -> bool:
        """Whether the tokenizer declares `token`: tokenizer_config.json lists it (added_tokens_decoder, special
        token lists), or the tokenizer code the folder ships quotes it (read as text, never run)."""
        return f'"{token}"' in self.tokenizer_text or f"'{token}'" in self.tokenizer_text


def _tokenizer_text(folder: Path, tokenizer_config: Mapping[str, Any]) -> str:
    text = json.dumps({key: value for key, value in tokenizer_config.items() if key != "chat_template"})
    auto_map = tokenizer_config.get("auto_map")
    named = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else None  # ["module.Class", fast]
    module = str(named[0] if isinstance(named, list) and named else named).rpartition(".")[0]
    code = folder / f"{module}.py"
    if module.isidentifier() and code.is_file():  # not "repo--module.Class" (another repository's code)
        text += "\n" + code.read_text(encoding="utf-8", errors="replace")
    return text


@dataclass(frozen=True)
class Signature:
    """One kind of folder a family recognises as its own: every condition given must hold.

    `template_markers` must all occur in the shipped chat template (so a folder without one never matches), and
    `template_lacks` must not; `template_is` asks for exactly that template (the record's own generated one, which
    glmtune's tiny folders ship); `no_template` asks for a folder that ships none; `tokens` and `tokens_lack` ask
    which special tokens its tokenizer declares. `layout` says how the folder's weights are stored: "native" (a
    transformers model_type) or "original" (the family's `OriginalLayout`).
    """

    model_types: tuple[str, ...]  # config.json model_type is one of these
    layout: str = "native"  # "native" | "original"
    config: Mapping[str, Any] = field(default_factory=dict)  # config.json fields with exactly these values
    config_keys: tuple[str, ...] = ()  # config.json fields that must be present
    files: tuple[str, ...] = ()  # files the folder must hold
    template_markers: tuple[str, ...] = ()
    template_lacks: tuple[str, ...] = ()
    template_is: str = ""
    no_template: bool = False
    tokens: tuple[str, ...] = ()  # special tokens the folder's tokenizer must declare (FolderFacts.declares)
    tokens_lack: tuple[str, ...] = ()  # ... and must not

    def matches(self, facts: FolderFacts) -> bool:
        config, template = facts.config, facts.chat_template
        return (
            config.get("model_type") in self.model_types
            and all(config.get(key) == value for key, value in self.config.items())
            and all(key in config for key in self.config_keys)
            and all(name in facts.files for name in self.files)
            and all(marker in template for marker in self.template_markers)
            and not any(marker in template for marker in self.template_lacks)
            and (not self.template_is or template == self.template_is)
            and not (self.no_template and template)
            and all(facts.declares(token) for token in self.tokens)
            and not any(facts.declares(token) for token in self.tokens_lack)
        )


@dataclass(frozen=True)
class TokenizerSpec:
    """An original-layout tokenizer: a generic kind (a module of glmtune.families) plus this family's data.

    kind "sentencepiece_unigram" (ChatGLM-6B style: text `replacements` before SentencePiece, ids offset by
    `id_offset_key` of tokenizer_config.json, special tokens are control pieces of the model), "sentencepiece_bpe"
    (ChatGLM2/3 style: special tokens appended after the pieces) or "tiktoken_bpe" (GLM-4 style: rank file,
    `split_pattern`, special tokens after the ranks or as tokenizer_config.json's added_tokens_decoder lists them).
    """

    kind: str
    vocab_file: str  # the file in the folder the kind reads
    special_tokens: tuple[str, ...]  # in id order
    eos_token: str
    pad_token: str | None = None
    unk_token: str | None = None
    bos_token: str | None = None
    mask_token: str | None = None
    single_word: tuple[str, ...] = ()  # special tokens that match only as whole words in text
    split_pattern: str = ""  # tiktoken_bpe: the pre-tokenizer regex
    replacements: tuple[tuple[str, str], ...] = ()  # sentencepiece_unigram: applied to text first, in order
    id_offset_key: str = ""  # sentencepiece_unigram: tokenizer_config.json key of the id offset
    id_offset_default: int = 0  # ... when the key is absent
    id_offset_piece: str = "<offset_{}>"  # sentencepiece_unigram: the names of the offset ids' pieces


@dataclass(frozen=True)
class WeightLayout:
    """How an original-layout folder's weights load without their remote code: the config transformers builds the
    model from, its class, and the state-dict mapping both ways. Functions import torch/transformers lazily."""

    name: str
    # original config.json -> a config the Auto classes know
    loading_config: Callable[[Mapping[str, Any]], Any]
    model_class: Callable[[], Any]  # the loading class (a transformers PreTrainedModel subclass)
    to_loaded: Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]]  # original names -> model names
    to_original: Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]]  # the way back


@dataclass(frozen=True)
class OriginalLayout:
    """A family's original remote-code folder: its tokenizer files and its weights."""

    tokenizer: TokenizerSpec
    weights: WeightLayout


@dataclass(frozen=True)
class TinySpec:
    """A builtin tiny checkpoint (`builtin:NAME`) of a family, built in-process by glmtune.checkpoints.tiny.

    layout "native": a transformers `model_type` with `config` overrides and a byte-level BPE trained in-process
    (the family's special tokens, `split_pattern`, chat template). layout "original": the family's original layout;
    `config` is the official config.json the builder shrinks, the tokenizer is trained in the family's
    `original.tokenizer` kind and `tokenizer_config` is written beside it.
    """

    name: str
    layout: str  # "native" | "original"
    model_type: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    tokenizer_config: Mapping[str, Any] = field(default_factory=dict)
    split_pattern: str = ""  # native: the pre-tokenizer regex of the trained tokenizer
    tokenizer_pieces: int = 0  # original: pad the trained vocabulary to this size (specials at their ids)
    source: str = ""  # native: the official config.json (shared glm-models folder) that `config` scales down


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    special_tokens: tuple[str, ...]  # every special token the tokenizer must resolve by name
    eos_token: str
    pad_token: str
    stop_tokens: tuple[str, ...]  # generation stops on any of these; written into generation_config.json
    layout: Layout  # (messages, options) -> pieces
    chat_template: str  # Jinja equivalent of `layout`, for tokenizers that ship without one
    detection: tuple[Signature, ...] = ()  # the folders this family recognises (any signature)
    lora_targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # by model_type
    # the transformers Auto class that builds a model of this family's folders (its text-only training and
    # generation go through that class's forward); most GLM releases are causal LMs
    auto_class: str = "AutoModelForCausalLM"
    turn_end_note: str = ""  # documentation: which token ends an assistant turn in training
    original: OriginalLayout | None = None  # the original remote-code layout, when the family has one
    tiny: tuple[TinySpec, ...] = ()  # its builtin tiny checkpoints
    fp16_safe: bool = False  # float16 training stays finite (the checkpoint was released and run in fp16)
    cannot_pack: str = ""  # why samples cannot share a training row (train.packing); empty: they can
    # vLLM's OpenAI server flags for this family's replies ("" where vLLM has no parser for it)
    vllm_tool_parser: str = ""
    vllm_reasoning_parser: str = ""
    parse_reply: ReplyParser | None = None  # a generated reply -> (content, reasoning_content, tool_calls)
    # what can be shown of an unfinished reply: (content so far, reasoning so far); default: parse_reply's parts
    partial_reply: Callable[[str], tuple[str, str | None]] | None = None
    # makes glmtune's own classes known to the Auto classes
    register_architectures: Callable[[], None] | None = None

    def reply(
        self, text: str, tools: Sequence[Mapping[str, Any]] = ()
    ) -> tuple[str, str | None, list[ToolCall]]:
        """(content, reasoning_content, tool_calls) of a generated reply (with its opening, see Piece)."""
        return self.parse_reply(text, tools) if self.parse_reply else (text.strip(), None, [])

    def reply_so_far(self, text: str) -> tuple[str, str | None]:
        """The content and reasoning of an unfinished reply that a longer reply will only extend."""
        if self.partial_reply is not None:
            return self.partial_reply(text)
        content, reasoning, _ = self.reply(text)
        return content, reasoning

    def recognises(self, facts: FolderFacts) -> bool:
        return any(signature.matches(facts) for signature in self.detection)

    def folder_layout(self, facts: FolderFacts) -> str | None:
        """ "native" or "original" for a folder this family recognises, else None."""
        return next((s.layout for s in self.detection if s.matches(facts)), None)


def role_layout(
    messages: Sequence[Message],
    options: RenderOptions,
    *,
    prefix: tuple[str, str],
    body: Callable[[Message], list[str]],
    conversation_end: str,
    tools_system: str = "",
) -> list[Piece]:
    """`prefix` tokens, `tools_system` (a system turn listing the tools) when given, then per message `<|role|>` and
    its body texts. An assistant turn is trained with the token that ends it: the next role token, or
    `conversation_end` after the last message."""
    pieces = [Piece(prefix[0], special=True), Piece(prefix[1], special=True)]
    if tools_system:
        pieces += [Piece("<|system|>", special=True), Piece(tools_system)]
    add_generation_prompt = options.add_generation_prompt
    previous_assistant = -1
    for index, message in enumerate(messages):
        ends_turn = previous_assistant >= 0
        pieces.append(Piece(f"<|{message.role}|>", special=True, train=ends_turn, turn=previous_assistant))
        is_answer = message.role == "assistant"
        turn = index if is_answer else -1
        pieces += [Piece(text, train=is_answer, turn=turn) for text in body(message)]
        previous_assistant = turn
    if previous_assistant >= 0:
        pieces.append(
            Piece(conversation_end, special=True, train=True, turn=previous_assistant, appended=True)
        )
    elif add_generation_prompt:
        pieces.append(Piece("<|assistant|>", special=True))
    return pieces


def question_answer_rounds(
    messages: Sequence[Message], model: str, options: RenderOptions
) -> tuple[str | None, list[tuple[str, str | None]]]:
    """(system text or None, [(question, answer or None)]) of a conversation in ChatGLM(2)'s round format."""
    refuse_tools(messages, options, model)
    refuse_reasoning(messages, model)
    system = None
    rounds: list[tuple[str, str | None]] = []
    for index, message in enumerate(messages):
        if message.role == "system" and index == 0:
            system = message.content
        elif message.role == "user" and (not rounds or rounds[-1][1] is not None):
            rounds.append((message.content, None))
        elif message.role == "assistant" and rounds and rounds[-1][1] is None and not message.metadata:
            rounds[-1] = (rounds[-1][0], message.content)
        else:
            raise UsageError(
                f"{model} renders a leading system message then user/assistant rounds; message {index + 1} "
                f"({message.role}{', with a tool call' if message.metadata else ''}) does not fit "
                f"({model} has no tool calls or observations)"
            )
    return system, rounds


def metadata_calls(messages: Sequence[Message], arguments_text: Callable[[ToolCall], str]) -> list[Message]:
    """GLM-4/ChatGLM3's call format: an assistant message with `tool_calls` becomes one assistant message per call,
    its metadata line the function name and its content `arguments_text(call)` (after the message's own text)."""
    expanded: list[Message] = []
    for message in messages:
        if not message.tool_calls:
            expanded.append(message)
            continue
        if message.content.strip():
            expanded.append(Message("assistant", message.content))
        expanded += [
            Message("assistant", arguments_text(call), metadata=call.name) for call in message.tool_calls
        ]
    return expanded


def metadata_partial_reply(text: str) -> tuple[str, str | None]:
    """An unfinished reply in the metadata-line call format (GLM-4, ChatGLM3): a plain answer opens with an empty
    metadata line, so it is shown once that newline is there; a name on the first line may still become a call,
    so nothing is shown until the reply is complete."""
    if text.startswith("\n"):
        return text.strip(), None
    return "", None


def without_reasoning(message: Message) -> Message:
    """The message with its reasoning removed (the GLM-4.5+ think format; `[data] thinking = "off"`): the field, and an inline `<think>…</think>` in the content (cut
    where the templates cut it, at the last `</think>`)."""
    content = message.content
    if message.role == "assistant" and "</think>" in content:
        content = content.split("</think>")[-1].lstrip("\n")
    return replace(message, content=content, reasoning_content=None)


def refuse_reasoning(messages: Sequence[Message], family: str) -> None:
    """Families without a reasoning format refuse `reasoning_content` rather than drop it."""
    for index, message in enumerate(messages):
        if message.reasoning_content is not None:
            raise UsageError(
                f"{family} has no reasoning format, but message {index + 1} carries reasoning_content; remove it "
                "(or write it into the content) or set model.family to a thinking family (glm4_5 and later)"
            )


def refuse_tools(messages: Sequence[Message], options: RenderOptions, family: str) -> None:
    """Families without a tool format refuse tool definitions, calls and results by name rather than drop them."""
    found = "a tools list" if options.tools else ""
    for index, message in enumerate(messages):
        if message.tool_calls or message.metadata or message.role == "observation":
            found = found or f"message {index + 1} ({message.role}, a tool call or result)"
    if found:
        raise UsageError(
            f"{family} has no tool calls (no tool format), but the conversation carries {found}; remove the tool data or set "
            "model.family to a family with tool calls (chatglm3, glm4, glm4_5 and later)"
        )


def read_json(path: Path, *, required: bool = True) -> dict[str, Any]:
    """A JSON object file; a missing optional file is {}; anything unreadable is a UsageError naming it."""
    if not required and not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data
