"""ChatGLM3-6B and ChatGLM3-6B-Base (original remote-code layout); the record `FAMILY`."""

from __future__ import annotations

import json
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
    ToolCall,
    checkpoint_names,
    metadata_calls,
    refuse_reasoning,
    role_layout,
)


def _chatglm3_layout(messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    # ChatGLM3 (tokenization_chatglm.py `build_single_message`): `[gMASK]sop`, then per message the role token,
    # `encode(f"{metadata}\n")` and `encode(content)`: two SentencePiece calls, so each text gets its own dummy
    # prefix "▁" (the chat template's "\n " reproduces that). finetune_demo/finetune_hf.py marks whole assistant
    # messages, appends `</s>` and shifts the mask by one: trained are the metadata line, the content and the
    # token after the message (the next role token, or `</s>` at the end).
    # Tools: `build_chat_input` appends `json.dumps(tools, indent=4, ensure_ascii=False)` to the system message after
    # a newline (one is added when the conversation has none); a call's content is the code block that
    # `process_response` evaluates: ```python\ntool_call(key=value, ...)\n```.
    refuse_reasoning(messages, "chatglm3")
    messages = metadata_calls(_with_tools(messages, options.tools), _tool_call_code)
    return role_layout(
        messages,
        options,
        prefix=("[gMASK]", "sop"),
        body=lambda m: [f"{m.metadata}\n", m.content],
        conversation_end="</s>",
    )


def _with_tools(messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]) -> list[Message]:
    if not tools:
        return list(messages)
    listing = json.dumps(list(tools), indent=4, ensure_ascii=False)
    if messages and messages[0].role == "system":
        return [Message("system", f"{messages[0].content}\n{listing}"), *messages[1:]]
    return [Message("system", f"\n{listing}"), *messages]


def _tool_call_code(call: ToolCall) -> str:
    arguments = ", ".join(f"{key}={value!r}" for key, value in call.arguments.items())
    return f"```python\ntool_call({arguments})\n```"


CHATGLM3_CHAT_TEMPLATE = (
    "[gMASK]sop{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['metadata'] is defined and m['metadata'] %}{{ m['metadata'] }}{% endif %}{{ '\\n ' + m['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# ChatGLM2 ships no template; this one renders `build_prompt`. Known limit: the bare `sop` token only matches as a
# whole word, so a system prompt that starts with a letter or digit glues to it; glmtune's own rendering is exact.


def _is_chatglm3(folder: Path, config: Mapping[str, Any], tokenizer_config: Mapping[str, Any]) -> bool:
    # ChatGLM2 and 3 share tokenizer.model and the config fields; ChatGLM3's tokenizer_config lists its role tokens.
    mentions_roles = "<|user|>" in json.dumps(tokenizer_config, ensure_ascii=False)
    return config.get("padded_vocab_size") == 65024 and (
        "chatglm3" in checkpoint_names(config, tokenizer_config) or mentions_roles
    )


FAMILY = Family(
    name="chatglm3",
    title="ChatGLM3-6B and ChatGLM3-6B-Base (original remote-code layout)",
    special_tokens=(*SP_CONTROL_TOKENS, "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "</s>"),
    eos_token="</s>",
    pad_token="<unk>",
    # modeling_chatglm.py `chat`: eos_token_id = [eos, <|user|>, <|observation|>]
    stop_tokens=("</s>", "<|user|>", "<|observation|>"),
    layout=_chatglm3_layout,
    chat_template=CHATGLM3_CHAT_TEMPLATE,
    lora_targets=CONVERTED_TARGETS,
    turn_end_note=(
        "an assistant turn ends with the next role token (<|user|>, or <|observation|> after a tool call), and the "
        "last one with </s>, as ChatGLM3's finetune_hf.py trains it (it appends eos and shifts the mask by one); "
        "observation messages are not trained (finetune_hf.py would train them; GLM-4's finetune.py does not)"
    ),
    original_tokenizer="chatglm3",
    recognises=_is_chatglm3,
    fp16_safe=True,  # released as float16 (config.json torch_dtype) and run with .half() by the official demos
)
