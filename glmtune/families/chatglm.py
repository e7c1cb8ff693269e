"""ChatGLM-6B v1 (original remote-code layout, loaded as glmtune's native port); the record `FAMILY`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glmtune.families.base import (
    Family,
    Message,
    Piece,
    RenderOptions,
    question_answer_rounds,
)


def _chatglm_layout(messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    # ChatGLM-6B v1 (modeling_chatglm.py `chat` / `stream_chat`): the prompt is the query alone when there is no
    # history, else "[Round i]\n问：{q}\n答：{a}\n" per past round (i from 0) then "[Round n]\n问：{q}\n答：", ONE
    # text; tokenization_chatglm.py `build_inputs_with_special_tokens` appends `[gMASK]<sop>` AFTER it (v1 puts the
    # prefix tokens at the end of the context), then the answer (encoded separately) and `<eop>`.
    # ptuning/main.py `preprocess_function_train` builds `a_ids + [gMASK, <sop>] + b_ids + [<eop>]` with labels
    # `[-100] * context_length + input_ids[context_length:]`, context_length being the index of `<sop>`: `<sop>`
    # itself is a target (predicted at the `[gMASK]` position), then the answer and `<eop>`. Only that last answer
    # is trained; past answers are prompt text. v1 has no system prompt; glmtune puts it in front of the prompt
    # followed by v1's line break "\n" (ptuning prepends its `source_prefix` to the prompt the same way).
    system, rounds = question_answer_rounds(messages, "ChatGLM-6B", options)
    history, query = rounds[:-1], rounds[-1][0] if rounds else ""
    prompt = f"{system}\n" if system is not None else ""
    if history:
        prompt += "".join(f"[Round {i}]\n问：{q}\n答：{a}\n" for i, (q, a) in enumerate(history))
        prompt += f"[Round {len(history)}]\n问：{query}\n答："
    else:
        prompt += query
    pieces = [Piece(prompt), Piece("[gMASK]", special=True)]
    final_answer = rounds[-1][1] if rounds else None
    if final_answer is None:
        return [*pieces, Piece("<sop>", special=True)]
    turn = len(messages) - 1
    return pieces + [
        Piece("<sop>", special=True, train=True, turn=turn),
        Piece(final_answer, train=True, turn=turn),
        Piece("<eop>", special=True, train=True, turn=turn),
    ]


CHATGLM_CHAT_TEMPLATE = (
    "{% set ns = namespace(rounds=0, round=0) %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.rounds = ns.rounds + 1 %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\\n' }}"
    "{% elif m['role'] == 'user' %}"
    "{% if ns.rounds == 1 %}{{ m['content'] }}"
    "{% else %}{{ '[Round ' + ns.round|string + ']\\n问：' + m['content'] + '\\n答：' }}{% endif %}"
    "{% set ns.round = ns.round + 1 %}{% if ns.round == ns.rounds %}{{ '[gMASK]<sop>' }}{% endif %}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}"
    "{% if ns.round < ns.rounds %}{{ '\\n' }}{% else %}{{ '<eop>' }}{% endif %}"
    "{% endif %}{% endfor %}{% if ns.rounds == 0 %}{{ '[gMASK]<sop>' }}{% endif %}"
)


def is_chatglm6b_config(config: Mapping[str, Any]) -> bool:
    """A remote-code ChatGLM-6B (v1) config.json: its own fields (ChatGLM2/3 and GLM-4 have padded_vocab_size)."""
    return config.get("model_type") == "chatglm" and (
        "position_encoding_2d" in config or "inner_hidden_size" in config
    )


def _is_chatglm6b(folder: Path, config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> bool:
    # ice_text.model is v1's SentencePiece file; its successors ship tokenizer.model
    return is_chatglm6b_config(config) or (folder / "ice_text.model").is_file()


FAMILY = Family(
    name="chatglm",
    title="ChatGLM-6B (v1: original remote-code layout, loaded as glmtune's native port)",
    special_tokens=("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"),
    eos_token="<eop>",
    pad_token="<pad>",
    # config.json eos_token_id 130005 (<eop>): what `chat()`'s generate stops on (no generation_config.json)
    stop_tokens=("<eop>",),
    layout=_chatglm_layout,
    chat_template=CHATGLM_CHAT_TEMPLATE,
    model_types=(
        "chatglm6b",
    ),  # glmtune.families.modeling_chatglm6b: full fine-tuning runs and exports save this model_type
    lora_targets={"chatglm6b": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")},
    turn_end_note=(
        "the last answer ends with <eop> and is the only trained turn; <sop> before it is trained too, as "
        "ptuning/main.py labels every position from <sop> on (the [gMASK] position predicts <sop>); earlier rounds "
        "are prompt text, so mask_history changes nothing"
    ),
    original_tokenizer="chatglm",
    recognises=_is_chatglm6b,
    fp16_safe=True,  # released as float16 (config.json torch_dtype) and run with .half() by the official demos
)
