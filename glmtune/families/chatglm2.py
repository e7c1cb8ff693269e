"""ChatGLM2-6B (original remote-code layout); the record `FAMILY`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glmtune.families.base import (
    CONVERTED_TARGETS,
    SP_CONTROL_TOKENS,
    Family,
    Message,
    Piece,
    RenderOptions,
    checkpoint_names,
    question_answer_rounds,
)


def _chatglm2_layout(messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    # ChatGLM2 (tokenization_chatglm.py `build_prompt`, ptuning/main.py `preprocess_function_train`): `[gMASK]sop`,
    # then ONE text "[Round i]\n\n问：{q}\n\n答：{a}\n\n" per past round (i from 1) and "[Round n]\n\n问：{q}\n\n答："
    # for the last; the answer is encoded separately and followed by `</s>`. Only that last answer is trained: past
    # answers are part of the prompt text, tokenized jointly with it. ChatGLM2 has no system prompt; glmtune puts it
    # in front of the rounds followed by a blank line (ptuning's `source_prefix` is prepended the same way).
    # A prompt ending in a question always ends with "答：", which is its generation prompt.
    system, rounds = question_answer_rounds(messages, "ChatGLM2", options)
    prompt = f"{system}\n\n" if system is not None else ""
    for number, (question, answer) in enumerate(rounds, 1):
        prompt += f"[Round {number}]\n\n问：{question}\n\n答："
        if answer is not None and number < len(rounds):
            prompt += f"{answer}\n\n"
    pieces = [Piece("[gMASK]", special=True), Piece("sop", special=True), Piece(prompt)]
    final_answer = rounds[-1][1] if rounds else None
    if final_answer is not None:
        turn = len(messages) - 1
        pieces += [
            Piece(final_answer, train=True, turn=turn),
            Piece("</s>", special=True, train=True, turn=turn),
        ]
    return pieces


CHATGLM2_CHAT_TEMPLATE = (
    "[gMASK]sop{% set ns = namespace(round=0) %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'user' %}{% set ns.round = ns.round + 1 %}"
    "{{ '[Round ' + ns.round|string + ']\\n\\n问：' + m['content'] + '\\n\\n答：' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{% if not loop.last %}{{ '\\n\\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
)

# ChatGLM-6B v1 ships no template; this one renders `_chatglm_layout`: the query alone without history, else the
# rounds from 0, `[gMASK]<sop>` after the last question, `<eop>` after a final answer.


from glmtune.families.chatglm3 import _is_chatglm3  # noqa: E402


def _is_chatglm2(folder: Path, config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> bool:
    names = checkpoint_names(config, tokenizer_config)
    return (
        config.get("padded_vocab_size") == 65024
        and "chatglm2" in names
        and not _is_chatglm3(folder, config, tokenizer_config)
    )


FAMILY = Family(
    name="chatglm2",
    title="ChatGLM2-6B (original remote-code layout)",
    special_tokens=(*SP_CONTROL_TOKENS, "</s>"),
    eos_token="</s>",
    pad_token="<unk>",
    stop_tokens=("</s>",),
    layout=_chatglm2_layout,
    chat_template=CHATGLM2_CHAT_TEMPLATE,
    lora_targets=CONVERTED_TARGETS,
    turn_end_note=(
        "the last answer ends with </s> and is the only trained turn (ptuning/main.py); earlier rounds are prompt "
        "text, so mask_history changes nothing"
    ),
    original_tokenizer="chatglm2",
    recognises=_is_chatglm2,
    fp16_safe=True,  # released as float16 (config.json torch_dtype) and run with .half() by the official demos
)
