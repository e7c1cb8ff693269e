"""GLM-4: glm-4-9b-chat (original layout and -hf), GLM-4-0414, glmtune's builtin tiny models; the record `FAMILY`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glmtune.families.base import (
    NATIVE_GLM_TARGETS,
    Family,
    Message,
    Piece,
    RenderOptions,
    metadata_calls,
    refuse_reasoning,
    role_layout,
)
from glmtune.errors import UsageError


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
        sections.append(f"\n\n## {function['name']}\n\n{body}\n在调用上述函数时，请使用 Json 格式表示调用的参数。")
    return _TOOLS_INTRO + "".join(sections)


GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['metadata'] is defined and m['metadata'] %}{{ m['metadata'] }}{% endif %}{{ '\\n' + m['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# The official ChatGLM3-6B template plus the metadata line (the official one drops it).


# GLM-4.5 (glm4_moe): attention and the MLP projections. In transformers 5 the routed experts are fused 3-D parameters;
# peft (0.21) maps gate/up/down_proj onto them (LoRA on `mlp.experts` parameters), and then leaves the dense first
# layers and the shared experts, which carry the same names, unadapted.
_MOE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _is_glm4_chat(folder: Path, config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> bool:
    # glm-4-9b-chat: the 151,552-row GLM-4 vocabulary and a tiktoken `tokenizer.model`.
    return (
        config.get("padded_vocab_size") == 151552
        or tokenizer_config.get("tokenizer_class") == "ChatGLM4Tokenizer"
    )


FAMILY = Family(
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
    lora_targets={"glm": NATIVE_GLM_TARGETS, "glm4": NATIVE_GLM_TARGETS, "glm4_moe": _MOE_TARGETS},
    turn_end_note="an assistant turn ends with the next role token: <|user|> (or <|observation|> before a tool result)",
    original_tokenizer="glm4",
    recognises=_is_glm4_chat,
)
