"""The shapes every family module fills in: messages, rendered pieces and the `Family` record, plus the layout
helpers several families share. No family names live here."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError

ROLES = ("system", "user", "assistant", "observation")
FAMILY_KEY = "glmtune_family"  # written into config.json by `glmtune convert` and `glmtune export`


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str
    metadata: str = ""  # GLM tool-call line: the function name of an assistant call


@dataclass(frozen=True)
class Piece:
    """One piece of a rendered conversation: a special token (by name) or text, and whether it is trained.

    Text pieces are encoded one by one, so a layout splits text exactly where the original encodes separately.
    """

    text: str
    special: bool = False
    train: bool = False
    turn: int = -1  # index of the assistant message this trained piece belongs to (for mask_history)


Layout = Callable[[Sequence[Message], bool], list[Piece]]
# (folder, its config.json, its tokenizer_config.json) of an original-layout folder -> does it belong to this family?
Recogniser = Callable[[Path, Mapping[str, Any], Mapping[str, Any]], bool]


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    special_tokens: tuple[str, ...]  # every special token the tokenizer must resolve by name
    eos_token: str
    pad_token: str
    stop_tokens: tuple[str, ...]  # generation stops on any of these; written into generation_config.json
    layout: Layout  # (messages, add_generation_prompt) -> pieces
    chat_template: str  # Jinja equivalent of `layout`, for tokenizers that ship without one
    model_types: tuple[str, ...] = ()  # native transformers model_types that belong to this family
    lora_targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # by model_type
    turn_end_note: str = ""  # documentation: which token ends an assistant turn in training
    original_tokenizer: str = ""  # glm_tokenizers family of the original-layout tokenizer files
    recognises: Recogniser | None = None  # detection of an original-layout (model_type "chatglm") folder
    fp16_safe: bool = False  # float16 training stays finite (the checkpoint was released and run in fp16)
    # vLLM's OpenAI server flags for this family's replies ("" where vLLM has no parser for it)
    vllm_tool_parser: str = ""
    vllm_reasoning_parser: str = ""


def role_layout(
    messages: Sequence[Message],
    add_generation_prompt: bool,
    *,
    prefix: tuple[str, str],
    body: Callable[[Message], list[str]],
    conversation_end: str,
) -> list[Piece]:
    """`prefix` tokens, then per message `<|role|>` and its body texts. An assistant turn is trained with the token
    that ends it: the next role token, or `conversation_end` after the last message."""
    pieces = [Piece(prefix[0], special=True), Piece(prefix[1], special=True)]
    previous_assistant = -1
    for index, message in enumerate(messages):
        ends_turn = previous_assistant >= 0
        pieces.append(Piece(f"<|{message.role}|>", special=True, train=ends_turn, turn=previous_assistant))
        is_answer = message.role == "assistant"
        turn = index if is_answer else -1
        pieces += [Piece(text, train=is_answer, turn=turn) for text in body(message)]
        previous_assistant = turn
    if previous_assistant >= 0:
        pieces.append(Piece(conversation_end, special=True, train=True, turn=previous_assistant))
    elif add_generation_prompt:
        pieces.append(Piece("<|assistant|>", special=True))
    return pieces


def question_answer_rounds(
    messages: Sequence[Message], model: str
) -> tuple[str | None, list[tuple[str, str | None]]]:
    """(system text or None, [(question, answer or None)]) of a conversation in ChatGLM(2)'s round format."""
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


# transformers Glm / Glm4 module names
NATIVE_GLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
# Original-layout checkpoints load as native `glm` (glmtune.checkpoints.convert), so LoRA wraps the native module names.
CONVERTED_TARGETS = {"glm": NATIVE_GLM_TARGETS}
# The control tokens ChatGLM2/3's SentencePiece tokenizer appends after its pieces, in id order.
SP_CONTROL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")


def checkpoint_names(config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> str:
    return f"{config.get('_name_or_path', '')} {tokenizer_config.get('name_or_path', '')}".lower()
