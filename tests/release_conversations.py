"""Golden conversations for the GLM-4.5+ families and the reference: the official template rendered with jinja2
exactly as transformers renders it (`render_jinja_template`), the messages in OpenAI's shape."""

from __future__ import annotations

from glmtune.families import Message
from glmtune.families.base import RenderOptions, ToolCall

TOOLS = (
    {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "search", "description": "搜索", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}, "strict": True}},
)  # fmt: skip
CALL = ToolCall("get_weather", {"city": "Paris", "days": 3})
SEARCH = ToolCall("search", {"q": "天气 Paris"})

# name -> (messages, tools); those ending with a user or tool message are rendered as generation prompts
CONVERSATIONS: dict[str, tuple[list[Message], tuple]] = {
    "single": ([Message("user", "Hi"), Message("assistant", "Hello!")], ()),
    "system": ([Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello!")], ()),
    "reasoning_field": ([Message("user", "2+2?"), Message("assistant", "4", reasoning_content="\nadd two and two\n")], ()),
    "inline_think": ([Message("user", "2+2?"), Message("assistant", "<think>\nadd\n</think>\n\n4")], ()),
    "history_field": ([Message("user", "q1"), Message("assistant", "a1", reasoning_content="r1"), Message("user", "q2"),
                       Message("assistant", "a2", reasoning_content="r2")], ()),
    "history_inline": ([Message("user", "q1"), Message("assistant", "<think>r1</think>a1"), Message("user", "q2"),
                        Message("assistant", "<think>r2</think>a2")], ()),
    "history_plain": ([Message("user", "q1"), Message("assistant", "a1"), Message("user", "q2"),
                       Message("assistant", "a2")], ()),
    "round_mixed": ([Message("user", "q1"), Message("assistant", "a1", reasoning_content="r1"), Message("assistant", "a1b"),
                     Message("user", "q2"), Message("assistant", "a2")], ()),
    "tools": ([Message("system", "sys"), Message("user", "Weather in Paris?"),
               Message("assistant", "", reasoning_content="need tool", tool_calls=(CALL,)),
               Message("observation", '{"temp": 20}'), Message("assistant", "It is 20°C.")], TOOLS),
    "parallel_calls": ([Message("user", "Weather?"), Message("assistant", "Let me check.", tool_calls=(CALL, SEARCH)),
                        Message("observation", "sunny"), Message("observation", "found"),
                        Message("assistant", "Sunny.")], TOOLS),
    "whitespace": ([Message("system", "  sys  "), Message("user", "  spaced  \n"),
                    Message("assistant", "\n  answer  \n", reasoning_content="  r  ")], ()),
    "empty": ([Message("user", ""), Message("assistant", "")], ()),
    "empty_reasoning": ([Message("user", "q"), Message("assistant", "a", reasoning_content="")], ()),
    "blank_reasoning": ([Message("user", "q"), Message("assistant", "a", reasoning_content=" \n ")], ()),
    "user_nothink": ([Message("user", "q/nothink"), Message("assistant", "a")], ()),
    "prompt": ([Message("user", "q1"), Message("assistant", "a1", reasoning_content="r1"), Message("user", "q2")], ()),
    "prompt_after_tool": ([Message("user", "w?"), Message("assistant", "", tool_calls=(CALL,)),
                           Message("observation", "x")], TOOLS),
}  # fmt: skip

# shared-asset folder -> family; GLM-4.5-Air and 4.6 ship GLM-4.5's template, GLM-4.7 GLM-4.7-Flash's
TEMPLATES = {"glm-4.5": "glm4_5", "glm-4.5-air": "glm4_5", "glm-4.6": "glm4_5", "glm-4.7": "glm4_7",
             "glm-4.7-flash": "glm4_7", "glm-5.1": "glm5", "glm-5.2": "glm5_2", "glm-5.3-flash": "glm5_3"}  # fmt: skip


def option_grid(messages: list[Message], tools: tuple) -> list[RenderOptions]:
    prompt = messages[-1].role != "assistant"
    return [
        RenderOptions(add_generation_prompt=prompt, tools=tools, enable_thinking=think, clear_thinking=clear)
        for think in (True, False)
        for clear in (True, False)
    ]


def openai_messages(messages: list[Message]) -> list[dict]:
    out = []
    for m in messages:
        turn: dict = {"role": "tool" if m.role == "observation" else m.role, "content": m.content}
        if m.reasoning_content is not None:
            turn["reasoning_content"] = m.reasoning_content
        if m.tool_calls:
            turn["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": dict(c.arguments)}}
                for c in m.tool_calls
            ]
        out.append(turn)
    return out


def template_text(template: str, messages: list[Message], options: RenderOptions) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        [openai_messages(messages)],
        tools=list(options.tools) or None,
        chat_template=template,
        add_generation_prompt=options.add_generation_prompt,
        enable_thinking=options.enable_thinking,
        clear_thinking=options.clear_thinking,
    )
    return rendered[0]


def tiny_xml_tokenizer():
    """The builtin tiny GLM tokenizer plus the GLM-4.5+ added tokens, flagged as GLM-4.7-Flash's tokenizer_config.json
    flags them (role and control tokens special; <think>, <tool_call>, /nothink, … plain added tokens)."""
    from tokenizers import AddedToken

    from glmtune.checkpoints.tiny import train_tiny_tokenizer
    from glmtune.families import GLM4
    from glmtune.families.think_xml import ADDED_TOKENS

    tokenizer = train_tiny_tokenizer(GLM4, GLM4.tiny[0])
    missing = [
        t for t in ADDED_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)
    ]
    special = [t for t in missing if t.startswith("<|") and not t.startswith("<|code_")]
    tokenizer.add_special_tokens({"additional_special_tokens": special}, replace_extra_special_tokens=False)
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in missing if t not in special]
    )
    return tokenizer
