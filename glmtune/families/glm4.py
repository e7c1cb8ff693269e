"""GLM-4: glm-4-9b-chat (original layout and -hf), GLM-4-0414, glmtune's builtin tiny models; the record `FAMILY`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from glmtune.errors import UsageError
from glmtune.families import glm_original_layout
from glmtune.families.base import (
    Family,
    Message,
    OriginalLayout,
    Piece,
    RenderOptions,
    Signature,
    TinySpec,
    TokenizerSpec,
    ToolCall,
    metadata_calls,
    metadata_partial_reply,
    refuse_reasoning,
    role_layout,
)
from glmtune.families.glm_original_layout import NATIVE_GLM_TARGETS


def _glm4_layout(messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    # GLM-4 renders `[gMASK]<sop>` then `<|role|>{metadata}\n{content}` per message, the metadata line and content as
    # one text (the official chat template; GLM-4's finetune.py tokenizes through it). The model generates
    # everything after `<|assistant|>` including the newline, and ends its turn by emitting the next role token
    # (`<|user|>`, or `<|observation|>` after a tool call): finetune.py appends `<|user|>` and shifts the mask by
    # one, so the token after each assistant message is supervised.
    # A call is `<|assistant|>{name}\n{arguments as JSON}` and the tools open the conversation as glm-4-9b-chat's
    # template renders a message's `tools` (its system text, then per function a `## name` section).
    refuse_reasoning(messages, "glm4")
    return role_layout(
        metadata_calls(messages, lambda call: json.dumps(call.arguments, ensure_ascii=False)),
        options,
        prefix=("[gMASK]", "<sop>"),
        body=lambda m: [f"{m.metadata}\n{m.content}"],
        conversation_end="<|user|>",
        tools_system=_tools_system(options.tools),
    )


def parse_reply(text: str, tools: Sequence[Mapping[str, Any]] = ()) -> tuple[str, str | None, list[ToolCall]]:
    """GLM-4's reply: `{name}\n{arguments as JSON}` for a call (a metadata line), else `\n{content}`."""
    metadata, _, body = text.partition("\n")
    if not metadata.strip():
        return body.strip(), None, []
    try:
        arguments = json.loads(body)
    except json.JSONDecodeError:
        return text.strip(), None, []  # a name line without JSON arguments is not a call: keep it as text
    return (
        "",
        None,
        [ToolCall(metadata.strip(), arguments if isinstance(arguments, dict) else {"value": arguments})],
    )


_TOOLS_INTRO = (
    "\n你是一个名为 GLM-4 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
)


def _tools_system(tools: Sequence[Mapping[str, Any]]) -> str:
    if not tools:
        return ""
    sections = []
    for tool in tools:
        function = tool.get("function") if tool.get("type") == "function" else None
        if not isinstance(function, Mapping) or "name" not in function:
            raise UsageError(
                f"tools: glm4 lists function tools ({{'type': 'function', 'function': {{'name': ...}}}}), got {tool!r}"
            )
        body = json.dumps(function, ensure_ascii=False, indent=4)
        sections.append(
            f"\n\n## {function['name']}\n\n{body}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
        )
    return _TOOLS_INTRO + "".join(sections)


GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['metadata'] is defined and m['metadata'] %}{{ m['metadata'] }}{% endif %}{{ '\\n' + m['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# The official ChatGLM3-6B template plus the metadata line (the official one drops it).


# glm4_moe (tiny-glm4-moe, GLM-4.5 and later): attention and every nn.Linear gate/up/down_proj (dense first layers,
# shared experts); the fused routed experts only with `[lora] experts` (glmtune.training.lora resolves the weights).
MOE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# GLM-4.7-Flash (glm4_moe_lite) and GLM-5.x attend with MLA: low-rank query and key/value projections instead of q/k/v_proj.
MLA_TARGETS = (
    "q_a_proj",
    "q_b_proj",
    "kv_a_proj_with_mqa",
    "kv_b_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
# The sizes of the tiny MLA + MoE checkpoints (GLM-4.7-Flash, GLM-5.1, GLM-5.2): 4 heads, 2 layers of which the
# first dense, 4 routed experts (top 2), MLA ranks and head dims quartered or less.
TINY_MLA_MOE_SIZES = {
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "first_k_dense_replace": 1,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 128,
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 48,
    "qk_rope_head_dim": 16,
}


SPECIAL_TOKENS = (
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
)
# tiktoken split pattern of GLM-4 (tokenization_chatglm.py of THUDM/glm-4-9b-chat).
SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# glm-4-9b-chat in its original layout: the 151,552-row GLM-4 vocabulary and a tiktoken `tokenizer.model`, whose
# special tokens follow the 151,329 ranks (as its tokenizer_config.json added_tokens_decoder lists them).
ORIGINAL = OriginalLayout(
    tokenizer=TokenizerSpec(
        kind="tiktoken_bpe",
        vocab_file="tokenizer.model",
        special_tokens=SPECIAL_TOKENS,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        split_pattern=SPLIT_PATTERN,
    ),
    weights=glm_original_layout.WEIGHTS,
)
# Native GLM-4 folders ship GLM-4's template ("[gMASK]<sop>" then role tokens); an original glm-4-9b-chat folder is
# told by its vocabulary size.
DETECTION = (
    # (glm4_moe only with GLM-4's own template, as glmtune's tiny MoE ships; GLM-4.5's XML template is glm4_5's)
    Signature(
        model_types=("glm", "glm4", "glm4_moe"),
        template_markers=("[gMASK]<sop>", "<|assistant|>"),
        template_lacks=("<arg_key>",),
    ),
    Signature(
        model_types=(glm_original_layout.MODEL_TYPE,),
        layout="original",
        config={"padded_vocab_size": 151552},
        files=("tokenizer.model",),
    ),
)
_MOE_CONFIG = {
    "moe_intermediate_size": 256,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
}
TINY = (
    TinySpec(
        "tiny-glm4", "native", model_type="glm4", split_pattern=SPLIT_PATTERN
    ),  # GLM-4-0414's architecture
    TinySpec("tiny-glm", "native", model_type="glm", split_pattern=SPLIT_PATTERN),  # glm-4-9b-chat-hf's
    TinySpec(
        "tiny-glm4-moe", "native", model_type="glm4_moe", config=_MOE_CONFIG, split_pattern=SPLIT_PATTERN
    ),
)


FAMILY = Family(
    name="glm4",
    title="GLM-4 (glm-4-9b-chat and -hf, GLM-4-0414, GLM-Z1, glmtune's builtin tiny models)",
    special_tokens=SPECIAL_TOKENS,
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    stop_tokens=("<|endoftext|>", "<|user|>", "<|observation|>"),
    layout=_glm4_layout,
    chat_template=GLM4_CHAT_TEMPLATE,
    detection=DETECTION,
    lora_targets={"glm": NATIVE_GLM_TARGETS, "glm4": NATIVE_GLM_TARGETS, "glm4_moe": MOE_TARGETS},
    turn_end_note="an assistant turn ends with the next role token: <|user|> (or <|observation|> before a tool result)",
    original=ORIGINAL,
    tiny=TINY,
    parse_reply=parse_reply,
    partial_reply=metadata_partial_reply,
)
