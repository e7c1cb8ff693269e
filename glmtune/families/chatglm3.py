"""ChatGLM3-6B and ChatGLM3-6B-Base (original remote-code layout); the record `FAMILY`."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from typing import Any

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


def _chatglm3_layout(messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    # ChatGLM3 (tokenization_chatglm.py `build_single_message`): `[gMASK]sop`, then per message the role token,
    # `encode(f"{metadata}\n")` and `encode(content)`: two SentencePiece calls, so each text gets its own dummy
    # prefix "▁" (the chat template's "\n " reproduces that). finetune_demo/finetune_hf.py marks whole assistant
    # messages, appends `</s>` and shifts the mask by one: trained are the metadata line, the content and the
    # token after the message (the next role token, or `</s>` at the end).
    # Tools: `build_chat_input` appends `json.dumps(tools, indent=4, ensure_ascii=False)` to the system message after
    # a newline (one is added when the conversation has none), the tools as ChatGLM3's demos write them: bare
    # function objects (name, description, parameters); a call's content is the code block that
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
    listing = json.dumps([tool.get("function", tool) for tool in tools], indent=4, ensure_ascii=False)
    if messages and messages[0].role == "system":
        return [Message("system", f"{messages[0].content}\n{listing}"), *messages[1:]]
    return [Message("system", f"\n{listing}"), *messages]


def _tool_call_code(call: ToolCall) -> str:
    arguments = ", ".join(f"{key}={value!r}" for key, value in call.arguments.items())
    return f"```python\ntool_call({arguments})\n```"


def parse_reply(text: str, tools: Sequence[Mapping[str, Any]] = ()) -> tuple[str, str | None, list[ToolCall]]:
    """ChatGLM3's reply: `{name}\n` and a ```python tool_call(key=value, ...)``` block for a call, else
    `\n{content}`; the call is read with `ast` (literal values only), never evaluated."""
    metadata, _, body = text.partition("\n")
    if not metadata.strip():
        return body.strip(), None, []
    code = body.strip().removeprefix("```python").removesuffix("```").strip()
    try:
        call = ast.parse(code, mode="eval").body
        if not (
            isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "tool_call"
        ):
            raise ValueError(code)
        arguments = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except (SyntaxError, ValueError):
        return (
            body.strip(),
            None,
            [],
        )  # ChatGLM3's tools that answer with plain content (e.g. its code interpreter)
    return "", None, [ToolCall(metadata.strip(), arguments)]


CHATGLM3_CHAT_TEMPLATE = (
    "[gMASK]sop{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['metadata'] is defined and m['metadata'] %}{{ m['metadata'] }}{% endif %}{{ '\\n ' + m['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# ChatGLM2 ships no template; this one renders `build_prompt`. Known limit: the bare `sop` token only matches as a
# whole word, so a system prompt that starts with a letter or digit glues to it; glmtune's own rendering is exact.


# The control tokens ChatGLM2/3's SentencePiece tokenizer appends after its 64,789 pieces, in id order.
SP_CONTROL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
SP_PIECES = (
    64789  # tokenizer.model's size: the special tokens follow at these ids ([gMASK] 64790, <|user|> 64795)
)
# tokenization_chatglm.py SPTokenizer: SentencePiece BPE, the control then role tokens appended in this order; the
# bare words sop/eop match only as whole words ("Aesop" stays text).
ORIGINAL = OriginalLayout(
    tokenizer=TokenizerSpec(
        kind="sentencepiece_bpe",
        vocab_file="tokenizer.model",
        special_tokens=(*SP_CONTROL_TOKENS, *ROLE_TOKENS),
        eos_token="</s>",
        pad_token="<unk>",
        unk_token="<unk>",
        single_word=("sop", "eop"),
    ),
    weights=glm_original_layout.WEIGHTS,
)
# ChatGLM2 and 3 share tokenizer.model and the config fields. ChatGLM3-6B ships a template with its role tokens;
# ChatGLM3-6B-Base ships none, but its tokenizer declares the role tokens ChatGLM2's has not: the shipped
# tokenization_chatglm.py appends them after the control tokens, and a tokenizer_config.json written by newer
# transformers lists them in added_tokens_decoder. A folder with neither reads as ChatGLM2: set model.family.
DETECTION = (
    Signature(
        model_types=(glm_original_layout.MODEL_TYPE,),
        layout="original",
        config={"padded_vocab_size": 65024},
        files=("tokenizer.model",),
        template_markers=("[gMASK]sop", "<|assistant|>"),
    ),
    Signature(
        model_types=(glm_original_layout.MODEL_TYPE,),
        layout="original",
        config={"padded_vocab_size": 65024},
        files=("tokenizer.model",),
        no_template=True,
        tokens=("<|user|>", "<|assistant|>"),
    ),
)
# ChatGLM3-6B's tokenizer_config.json has a chat template and these tokens.
TINY = (
    TinySpec(
        "tiny-chatglm3",
        "original",
        config={**glm_original_layout.OFFICIAL_CONFIG, **glm_original_layout.TINY_SIZES, "seq_length": 8192},
        tokenizer_config={
            "tokenizer_class": "ChatGLMTokenizer",
            "remove_space": False,
            "chat_template": CHATGLM3_CHAT_TEMPLATE,
            "eos_token": "</s>",
            "pad_token": "<unk>",
        },
        tokenizer_pieces=SP_PIECES,
    ),
)


FAMILY = Family(
    name="chatglm3",
    title="ChatGLM3-6B and ChatGLM3-6B-Base (original remote-code layout)",
    special_tokens=(*SP_CONTROL_TOKENS, *ROLE_TOKENS, "</s>"),
    eos_token="</s>",
    pad_token="<unk>",
    # modeling_chatglm.py `chat`: eos_token_id = [eos, <|user|>, <|observation|>]
    stop_tokens=("</s>", "<|user|>", "<|observation|>"),
    layout=_chatglm3_layout,
    chat_template=CHATGLM3_CHAT_TEMPLATE,
    detection=DETECTION,
    lora_targets=glm_original_layout.LORA_TARGETS,
    turn_end_note=(
        "an assistant turn ends with the next role token (<|user|>, or <|observation|> after a tool call), and the "
        "last one with </s>, as ChatGLM3's finetune_hf.py trains it (it appends eos and shifts the mask by one); "
        "observation messages are not trained (finetune_hf.py would train them; GLM-4's finetune.py does not)"
    ),
    original=ORIGINAL,
    tiny=TINY,
    parse_reply=parse_reply,
    partial_reply=metadata_partial_reply,
    fp16_safe=True,  # released as float16 (config.json torch_dtype) and run with .half() by the official demos
)
