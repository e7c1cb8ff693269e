"""The GLM family registry: every family-specific fact lives here, one record per family.

A record holds the special tokens by name, the prompt layout (which pieces a conversation renders to and which of
them are trained), the stop tokens, the LoRA target modules per architecture and how to recognise the family in a
checkpoint folder. No other module asks which family it is; they read the record.

Families: `glm4` (GLM-4 native, and glm-4-9b-chat in its original remote-code layout), `chatglm3` (ChatGLM3-6B and
-base, original layout), `chatglm2` (ChatGLM2-6B, original layout) and `chatglm` (ChatGLM-6B v1, original layout or
glmtune's native port). Sources of the format facts are cited at each layout: the official tokenizer_config.json chat
templates and the original `tokenization_chatglm.py`, `modeling_chatglm.py` and fine-tuning scripts of
THUDM/ChatGLM-6B, THUDM/ChatGLM2-6B, THUDM/ChatGLM3 and THUDM/GLM-4.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError
from glmtune.families.base import (
    FAMILY_KEY,
    ROLES,
    Family,
    Layout,
    Message,
    Piece,
    Recogniser,
    question_answer_rounds,
    read_json,
    role_layout,
)

__all__ = ["FAMILY_KEY", "ROLES", "Family", "Layout", "Message", "Piece", "Recogniser", "read_json"]


def _glm4_layout(messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
    # GLM-4 renders `[gMASK]<sop>` then `<|role|>{metadata}\n{content}` per message, the metadata line and content as
    # one text (the official chat template; GLM-4's finetune.py tokenizes through it). The model generates
    # everything after `<|assistant|>` including the newline, and ends its turn by emitting the next role token
    # (`<|user|>`, or `<|observation|>` after a tool call): finetune.py appends `<|user|>` and shifts the mask by
    # one, so the token after each assistant message is supervised.
    return role_layout(
        messages,
        add_generation_prompt,
        prefix=("[gMASK]", "<sop>"),
        body=lambda m: [f"{m.metadata}\n{m.content}"],
        conversation_end="<|user|>",
    )


def _chatglm3_layout(messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
    # ChatGLM3 (tokenization_chatglm.py `build_single_message`): `[gMASK]sop`, then per message the role token,
    # `encode(f"{metadata}\n")` and `encode(content)`: two SentencePiece calls, so each text gets its own dummy
    # prefix "▁" (the chat template's "\n " reproduces that). finetune_demo/finetune_hf.py marks whole assistant
    # messages, appends `</s>` and shifts the mask by one: trained are the metadata line, the content and the
    # token after the message (the next role token, or `</s>` at the end).
    return role_layout(
        messages,
        add_generation_prompt,
        prefix=("[gMASK]", "sop"),
        body=lambda m: [f"{m.metadata}\n", m.content],
        conversation_end="</s>",
    )


def _chatglm2_layout(messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
    # ChatGLM2 (tokenization_chatglm.py `build_prompt`, ptuning/main.py `preprocess_function_train`): `[gMASK]sop`,
    # then ONE text "[Round i]\n\n问：{q}\n\n答：{a}\n\n" per past round (i from 1) and "[Round n]\n\n问：{q}\n\n答："
    # for the last; the answer is encoded separately and followed by `</s>`. Only that last answer is trained: past
    # answers are part of the prompt text, tokenized jointly with it. ChatGLM2 has no system prompt; glmtune puts it
    # in front of the rounds followed by a blank line (ptuning's `source_prefix` is prepended the same way).
    # A prompt ending in a question always ends with "答：", which is its generation prompt.
    system, rounds = question_answer_rounds(messages, "ChatGLM2")
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


def _chatglm_layout(messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
    # ChatGLM-6B v1 (modeling_chatglm.py `chat` / `stream_chat`): the prompt is the query alone when there is no
    # history, else "[Round i]\n问：{q}\n答：{a}\n" per past round (i from 0) then "[Round n]\n问：{q}\n答：", ONE
    # text; tokenization_chatglm.py `build_inputs_with_special_tokens` appends `[gMASK]<sop>` AFTER it (v1 puts the
    # prefix tokens at the end of the context), then the answer (encoded separately) and `<eop>`.
    # ptuning/main.py `preprocess_function_train` builds `a_ids + [gMASK, <sop>] + b_ids + [<eop>]` with labels
    # `[-100] * context_length + input_ids[context_length:]`, context_length being the index of `<sop>`: `<sop>`
    # itself is a target (predicted at the `[gMASK]` position), then the answer and `<eop>`. Only that last answer
    # is trained; past answers are prompt text. v1 has no system prompt; glmtune puts it in front of the prompt
    # followed by v1's line break "\n" (ptuning prepends its `source_prefix` to the prompt the same way).
    system, rounds = question_answer_rounds(messages, "ChatGLM-6B")
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


GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['metadata'] is defined and m['metadata'] %}{{ m['metadata'] }}{% endif %}{{ '\\n' + m['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# The official ChatGLM3-6B template plus the metadata line (the official one drops it).
CHATGLM3_CHAT_TEMPLATE = (
    "[gMASK]sop{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['metadata'] is defined and m['metadata'] %}{{ m['metadata'] }}{% endif %}{{ '\\n ' + m['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# ChatGLM2 ships no template; this one renders `build_prompt`. Known limit: the bare `sop` token only matches as a
# whole word, so a system prompt that starts with a letter or digit glues to it; glmtune's own rendering is exact.
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

_NATIVE_GLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
# Original-layout checkpoints load as native `glm` (glmtune.checkpoints.convert), so LoRA wraps the native module names.
_CONVERTED_TARGETS = {"glm": _NATIVE_GLM_TARGETS}
# GLM-4.5 (glm4_moe): attention and the MLP projections. In transformers 5 the routed experts are fused 3-D parameters;
# peft (0.21) maps gate/up/down_proj onto them (LoRA on `mlp.experts` parameters), and then leaves the dense first
# layers and the shared experts, which carry the same names, unadapted.
_MOE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_CHATGLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")


def _names(config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> str:
    return f"{config.get('_name_or_path', '')} {tokenizer_config.get('name_or_path', '')}".lower()


def _is_glm4_chat(folder: Path, config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> bool:
    # glm-4-9b-chat: the 151,552-row GLM-4 vocabulary and a tiktoken `tokenizer.model`.
    return (
        config.get("padded_vocab_size") == 151552
        or tokenizer_config.get("tokenizer_class") == "ChatGLM4Tokenizer"
    )


def _is_chatglm3(folder: Path, config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> bool:
    # ChatGLM2 and 3 share tokenizer.model and the config fields; ChatGLM3's tokenizer_config lists its role tokens.
    mentions_roles = "<|user|>" in json.dumps(tokenizer_config, ensure_ascii=False)
    return config.get("padded_vocab_size") == 65024 and (
        "chatglm3" in _names(config, tokenizer_config) or mentions_roles
    )


def _is_chatglm2(folder: Path, config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> bool:
    names = _names(config, tokenizer_config)
    return (
        config.get("padded_vocab_size") == 65024
        and "chatglm2" in names
        and not _is_chatglm3(folder, config, tokenizer_config)
    )


def is_chatglm6b_config(config: Mapping[str, Any]) -> bool:
    """A remote-code ChatGLM-6B (v1) config.json: its own fields (ChatGLM2/3 and GLM-4 have padded_vocab_size)."""
    return config.get("model_type") == "chatglm" and (
        "position_encoding_2d" in config or "inner_hidden_size" in config
    )


def _is_chatglm6b(folder: Path, config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> bool:
    # ice_text.model is v1's SentencePiece file; its successors ship tokenizer.model
    return is_chatglm6b_config(config) or (folder / "ice_text.model").is_file()


GLM4 = Family(
    name="glm4",
    title="GLM-4 (glm-4-9b-chat and -hf, GLM-4-0414, GLM-4.5, glmtune's builtin tiny models)",
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
    layout=_glm4_layout,
    chat_template=GLM4_CHAT_TEMPLATE,
    model_types=("glm", "glm4", "glm4_moe"),
    lora_targets={"glm": _NATIVE_GLM_TARGETS, "glm4": _NATIVE_GLM_TARGETS, "glm4_moe": _MOE_TARGETS},
    turn_end_note="an assistant turn ends with the next role token: <|user|> (or <|observation|> before a tool result)",
    original_tokenizer="glm4",
    recognises=_is_glm4_chat,
)

CHATGLM3 = Family(
    name="chatglm3",
    title="ChatGLM3-6B and ChatGLM3-6B-Base (original remote-code layout)",
    special_tokens=(*_CHATGLM_SPECIALS, "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "</s>"),
    eos_token="</s>",
    pad_token="<unk>",
    # modeling_chatglm.py `chat`: eos_token_id = [eos, <|user|>, <|observation|>]
    stop_tokens=("</s>", "<|user|>", "<|observation|>"),
    layout=_chatglm3_layout,
    chat_template=CHATGLM3_CHAT_TEMPLATE,
    lora_targets=_CONVERTED_TARGETS,
    turn_end_note=(
        "an assistant turn ends with the next role token (<|user|>, or <|observation|> after a tool call), and the "
        "last one with </s>, as ChatGLM3's finetune_hf.py trains it (it appends eos and shifts the mask by one); "
        "observation messages are not trained (finetune_hf.py would train them; GLM-4's finetune.py does not)"
    ),
    original_tokenizer="chatglm3",
    recognises=_is_chatglm3,
    fp16_safe=True,  # released as float16 (config.json torch_dtype) and run with .half() by the official demos
)

CHATGLM2 = Family(
    name="chatglm2",
    title="ChatGLM2-6B (original remote-code layout)",
    special_tokens=(*_CHATGLM_SPECIALS, "</s>"),
    eos_token="</s>",
    pad_token="<unk>",
    stop_tokens=("</s>",),
    layout=_chatglm2_layout,
    chat_template=CHATGLM2_CHAT_TEMPLATE,
    lora_targets=_CONVERTED_TARGETS,
    turn_end_note=(
        "the last answer ends with </s> and is the only trained turn (ptuning/main.py); earlier rounds are prompt "
        "text, so mask_history changes nothing"
    ),
    original_tokenizer="chatglm2",
    recognises=_is_chatglm2,
    fp16_safe=True,  # released as float16 (config.json torch_dtype) and run with .half() by the official demos
)

CHATGLM = Family(
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
    cannot_pack=(
        "its prefix-LM attention and 2D positions are derived from the [gMASK]/<sop> of one sample per row "
        "(glmtune.families.modeling_chatglm6b)"
    ),
)

REGISTRY: dict[str, Family] = {family.name: family for family in (GLM4, CHATGLM3, CHATGLM2, CHATGLM)}


def get_family(name: str) -> Family:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"model.family: unknown family {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None


def detect_family(folder: Path) -> Family:
    """Tell the family from a checkpoint folder: glmtune's own stamp, the original layout, or the model_type."""
    config_path = folder / "config.json"
    config = read_json(config_path)
    if config.get(FAMILY_KEY):
        return get_family(str(config[FAMILY_KEY]))
    model_type = config.get("model_type", "")
    if model_type == "chatglm":
        return _detect_original(folder, config)
    for family in REGISTRY.values():
        if model_type in family.model_types:
            return family
    raise UsageError(
        f"{config_path}: cannot tell the GLM family of model_type {model_type!r}; "
        f"set model.family to one of {', '.join(sorted(REGISTRY))}"
    )


def _detect_original(folder: Path, config: Mapping[str, Any]) -> Family:
    tokenizer_config = read_json(folder / "tokenizer_config.json", required=False)
    matches = [
        f
        for f in REGISTRY.values()
        if f.recognises is not None and f.recognises(folder, config, tokenizer_config)
    ]
    if len(matches) != 1:
        candidates = ", ".join(f.name for f in matches or REGISTRY.values() if f.recognises is not None)
        raise UsageError(
            f"{folder / 'config.json'}: cannot tell which ChatGLM this original-layout checkpoint is; "
            f"set model.family (glmtune convert: --family) to one of {candidates}"
        )
    return matches[0]
