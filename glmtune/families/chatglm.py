"""ChatGLM-6B v1 (original remote-code layout, loaded as glmtune's native port); the record `FAMILY`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from glmtune.families.base import (
    Family,
    Message,
    OriginalLayout,
    Piece,
    RenderOptions,
    Signature,
    TokenizerSpec,
    WeightLayout,
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


SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>")
# tokenization_chatglm.py SPTokenizer: `_preprocess` turns newlines, tabs and runs of 2-80 spaces into user-defined
# pieces before SentencePiece; `special_tokens` are control pieces of ice_text.model; ids are offset by
# tokenizer_config.json's num_image_tokens (the published config says 0; the code's default is 20000).
MAX_BLANK = 80
TOKENIZER = TokenizerSpec(
    kind="sentencepiece_unigram",
    vocab_file="ice_text.model",
    special_tokens=("[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"),
    eos_token="<eop>",
    pad_token="<pad>",
    unk_token="<unk>",
    bos_token="<sop>",
    mask_token="[MASK]",
    replacements=(
        ("\n", "<n>"),
        ("\t", "<|tab|>"),
        *((" " * n, f"<|blank_{n}|>") for n in range(MAX_BLANK, 1, -1)),
    ),
    id_offset_key="num_image_tokens",
    id_offset_default=20000,
    id_offset_piece="<image_{}>",
)


def _port_config(original: Mapping[str, Any]) -> Any:
    from glmtune.families.modeling_chatglm6b import ChatGLM6BConfig

    _register_port()
    return ChatGLM6BConfig.from_original(dict(original))


def _register_port() -> None:
    """The port's config and model, and its tokenizer class for folders saved with it (run directories, exports):
    glmtune loads them with its own copy of the class, so without trust_remote_code."""
    from transformers import AutoTokenizer

    from glmtune.families import modeling_chatglm6b
    from glmtune.families.tokenization_sentencepiece_unigram import SentencePieceUnigramTokenizer

    modeling_chatglm6b.register()
    AutoTokenizer.register(
        modeling_chatglm6b.ChatGLM6BConfig, tokenizer_class=SentencePieceUnigramTokenizer, exist_ok=True
    )


def _port_class() -> Any:
    from glmtune.families.modeling_chatglm6b import ChatGLM6BForCausalLM

    return ChatGLM6BForCausalLM


def _port_to_original(state: dict[str, Any], original: Mapping[str, Any]) -> dict[str, Any]:
    from glmtune.families.modeling_chatglm6b import original_state_dict

    return original_state_dict(state, dict(original))


# The port keeps the original parameter names, so loading is by name and saving adds back what the original saves.
PORT_WEIGHTS = WeightLayout(
    name="chatglm6b-port",
    loading_config=_port_config,
    model_class=_port_class,
    to_loaded=lambda state, original: state,
    to_original=_port_to_original,
)
# Original folders: v1's own config fields (ChatGLM2/3 and GLM-4 have padded_vocab_size instead) or its
# ice_text.model (its successors ship tokenizer.model); native: glmtune's port, which full fine-tuning saves.
DETECTION = (
    Signature(model_types=("chatglm",), layout="original", config_keys=("position_encoding_2d",)),
    Signature(model_types=("chatglm",), layout="original", config_keys=("inner_hidden_size",)),
    Signature(model_types=("chatglm",), layout="original", files=("ice_text.model",)),
    Signature(model_types=("chatglm6b",)),
)


FAMILY = Family(
    name="chatglm",
    title="ChatGLM-6B (v1: original remote-code layout, loaded as glmtune's native port)",
    special_tokens=SPECIAL_TOKENS,
    eos_token="<eop>",
    pad_token="<pad>",
    # config.json eos_token_id 130005 (<eop>): what `chat()`'s generate stops on (no generation_config.json)
    stop_tokens=("<eop>",),
    layout=_chatglm_layout,
    chat_template=CHATGLM_CHAT_TEMPLATE,
    detection=DETECTION,
    lora_targets={"chatglm6b": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")},
    turn_end_note=(
        "the last answer ends with <eop> and is the only trained turn; <sop> before it is trained too, as "
        "ptuning/main.py labels every position from <sop> on (the [gMASK] position predicts <sop>); earlier rounds "
        "are prompt text, so mask_history changes nothing"
    ),
    original=OriginalLayout(tokenizer=TOKENIZER, weights=PORT_WEIGHTS),
    register_architectures=_register_port,
    fp16_safe=True,  # released as float16 (config.json torch_dtype) and run with .half() by the official demos
    cannot_pack=(
        "its prefix-LM attention and 2D positions are derived from the [gMASK]/<sop> of one sample per row "
        "(glmtune.families.modeling_chatglm6b)"
    ),
)
