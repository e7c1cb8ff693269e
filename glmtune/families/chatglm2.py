"""ChatGLM2-6B (original remote-code layout); the record `FAMILY`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from glmtune.families import glm_original_layout
from glmtune.families.base import (
    Family,
    Message,
    OriginalLayout,
    Piece,
    RenderOptions,
    Signature,
    TinySpec,
    question_answer_rounds,
)
from glmtune.families.chatglm3 import ORIGINAL as CHATGLM3_ORIGINAL
from glmtune.families.chatglm3 import SP_CONTROL_TOKENS, SP_PIECES


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

# ChatGLM3's tokenizer without the role tokens; ChatGLM2-6B-32K's rope_ratio interpolated positions (ChatGLM3 and
# GLM-4 scale the rotary base with it), which the native Glm cannot do: refused.
ORIGINAL = OriginalLayout(
    tokenizer=replace(CHATGLM3_ORIGINAL.tokenizer, special_tokens=SP_CONTROL_TOKENS),
    weights=glm_original_layout.WEIGHTS_WITHOUT_ROPE_RATIO,
)
# ChatGLM2-6B ships no chat template (ChatGLM3-6B does) and its tokenizer has no role tokens (ChatGLM3-6B-Base's,
# the same tokenizer.model, declares them).
DETECTION = (
    Signature(
        model_types=(glm_original_layout.MODEL_TYPE,),
        layout="original",
        config={"padded_vocab_size": 65024},
        files=("tokenizer.model",),
        no_template=True,
        tokens_lack=("<|user|>", "<|assistant|>"),
    ),
)
TINY = (
    TinySpec(
        "tiny-chatglm2",
        "original",
        config={**glm_original_layout.OFFICIAL_CONFIG, **glm_original_layout.TINY_SIZES, "seq_length": 32768},
        tokenizer_config={"tokenizer_class": "ChatGLMTokenizer", "remove_space": False},
        tokenizer_pieces=SP_PIECES,
    ),
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
    detection=DETECTION,
    lora_targets=glm_original_layout.LORA_TARGETS,
    turn_end_note=(
        "the last answer ends with </s> and is the only trained turn (ptuning/main.py); earlier rounds are prompt "
        "text, so mask_history changes nothing"
    ),
    original=ORIGINAL,
    tiny=TINY,
    fp16_safe=True,  # released as float16 (config.json torch_dtype) and run with .half() by the official demos
)
