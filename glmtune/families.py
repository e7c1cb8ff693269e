"""The GLM family registry: every family-specific fact lives here, one record per family.

A record holds the special tokens by name, the prompt layout (which pieces a conversation renders to and which of
them are trained), the stop tokens, the LoRA target modules per architecture and how to recognise the family in a
checkpoint folder. No other module asks which family it is; they read the record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from glmtune.errors import UsageError

ROLES = ("system", "user", "assistant", "observation")


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str
    metadata: str = ""  # GLM tool-call line: the function name of an assistant call


@dataclass(frozen=True)
class Piece:
    """One piece of a rendered conversation: a special token (by name) or text, and whether it is trained."""

    text: str
    special: bool = False
    train: bool = False
    turn: int = -1  # index of the assistant message this trained piece belongs to (for mask_history)


Layout = Callable[[Sequence[Message], bool], list[Piece]]


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    special_tokens: tuple[str, ...]  # every special token the tokenizer must resolve by name
    eos_token: str
    pad_token: str
    stop_tokens: tuple[str, ...]  # generation stops on any of these; written into generation_config.json
    fp16_safe: bool  # False where fp16 activations overflow (GLM-4): fp16 is refused unless forced
    layout: Layout  # (messages, add_generation_prompt) -> pieces
    chat_template: str  # Jinja equivalent of `layout`, for tokenizers that ship without one
    model_types: tuple[str, ...] = ()  # native transformers model_types that belong to this family
    lora_targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # by model_type
    turn_end_note: str = ""  # documentation: which token ends an assistant turn in training


def _glm4_layout(messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
    # GLM-4 renders `[gMASK]<sop>` then `<|role|>{metadata}\n{content}` per message. The model generates everything
    # after `<|assistant|>` including the newline, and ends its turn by emitting the next role token (`<|user|>`, or
    # `<|observation|>` after a tool call): those are what GLM-4's own fine-tuning code supervises.
    pieces = [Piece("[gMASK]", special=True), Piece("<sop>", special=True)]
    previous_assistant = -1
    for index, message in enumerate(messages):
        ends_turn = previous_assistant >= 0
        pieces.append(Piece(f"<|{message.role}|>", special=True, train=ends_turn, turn=previous_assistant))
        is_answer = message.role == "assistant"
        pieces.append(
            Piece(f"{message.metadata}\n{message.content}", train=is_answer, turn=index if is_answer else -1)
        )
        previous_assistant = index if is_answer else -1
    if previous_assistant >= 0:
        pieces.append(Piece("<|user|>", special=True, train=True, turn=previous_assistant))
    elif add_generation_prompt:
        pieces.append(Piece("<|assistant|>", special=True))
    return pieces


GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['metadata'] is defined and m['metadata'] %}{{ m['metadata'] }}{% endif %}{{ '\\n' + m['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_NATIVE_GLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")

GLM4 = Family(
    name="glm4",
    title="GLM-4 (glm-4-9b-chat-hf, GLM-4-0414, GLM-4.5, glmtune's builtin tiny models)",
    special_tokens=(
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
    ),
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    stop_tokens=("<|endoftext|>", "<|user|>", "<|observation|>"),
    fp16_safe=False,
    layout=_glm4_layout,
    chat_template=GLM4_CHAT_TEMPLATE,
    model_types=("glm", "glm4", "glm4_moe"),
    lora_targets={"glm": _NATIVE_GLM_TARGETS, "glm4": _NATIVE_GLM_TARGETS},
    turn_end_note="an assistant turn ends with the next role token: <|user|> (or <|observation|> before a tool result)",
)

REGISTRY: dict[str, Family] = {family.name: family for family in (GLM4,)}


def get_family(name: str) -> Family:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"model.family: unknown family {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None


def detect_family(folder: Path) -> Family:
    """Tell the family from a checkpoint folder's config.json."""
    config_path = folder / "config.json"
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{config_path}: cannot read the model config ({exc})") from None
    for family in REGISTRY.values():
        if model_type in family.model_types:
            return family
    raise UsageError(
        f"{config_path}: cannot tell the GLM family of model_type {model_type!r}; "
        f"set model.family to one of {', '.join(sorted(REGISTRY))}"
    )
