"""Replies as `serve` returns them: tool calls and reasoning parsed back from what each family's layout renders, and
streaming that only ever extends what it has sent. No model needed: the texts come from the layouts themselves."""

from __future__ import annotations

import json

import pytest

from glmtune.families import REGISTRY, Message, RenderOptions, ToolCall
from glmtune.inference.generation import Reply
from glmtune.inference.openai_api import ApiError, parse_request, render_options, to_conversation
from glmtune.inference.serve import openai_message

TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
)
CALL = ToolCall("get_weather", {"city": "北京", "days": 3})


def _text(pieces) -> str:
    return "".join(piece.text for piece in pieces)


def _reply_text(family, messages, answer, options):
    """What the model would generate for `answer`: the full rendering minus the prompt, without the end token.
    A turn without reasoning is what the prompt with thinking off continues, where the family has that switch."""
    if answer.reasoning_content is None:
        try:
            family.layout(messages, RenderOptions(add_generation_prompt=True, enable_thinking=False))
            options = {"enable_thinking": False, **options}
        except Exception:  # noqa: BLE001 - no thinking switch: the one prompt there is
            pass
    prompt = family.layout(messages, RenderOptions(add_generation_prompt=True, **options))
    full = family.layout([*messages, answer], RenderOptions(**options))
    full = [piece for piece in full if not piece.appended]
    prompt_text, full_text = _text(prompt), _text(full)
    assert full_text.startswith(prompt_text), (prompt_text, full_text)
    opening = "".join(piece.text for piece in prompt if piece.opens_reply)
    return opening, full_text[len(prompt_text) :]


def _token_ends(family, text: str) -> list[int]:
    """Every place generation can stop at: special tokens arrive whole, text character by character."""
    inside = set()
    for token in family.special_tokens:
        start = text.find(token)
        while start >= 0:
            inside.update(range(start + 1, start + len(token)))
            start = text.find(token, start + 1)
    return [end for end in range(len(text) + 1) if end not in inside]


def _tool_families():
    for family in REGISTRY.values():
        try:
            family.layout([Message("user", "q")], RenderOptions(tools=TOOLS))
        except Exception:  # noqa: BLE001 - a family without a tool format refuses tools; it is not tested here
            continue
        yield family


@pytest.mark.parametrize("family", list(_tool_families()), ids=lambda f: f.name)
def test_a_rendered_tool_call_parses_back(family):
    messages = [Message("user", "北京天气？")]
    answer = Message("assistant", "", tool_calls=(CALL,))
    opening, text = _reply_text(family, messages, answer, {"tools": TOOLS})
    content, _, calls = family.reply(opening + text, TOOLS)
    assert [(c.name, dict(c.arguments)) for c in calls] == [(CALL.name, dict(CALL.arguments))]
    assert content == ""


@pytest.mark.parametrize("family", list(_tool_families()), ids=lambda f: f.name)
def test_a_plain_answer_parses_back_as_content(family):
    messages = [Message("user", "你好")]
    opening, text = _reply_text(family, messages, Message("assistant", "你好！有什么可以帮你？"), {})
    content, _, calls = family.reply(opening + text)
    assert content == "你好！有什么可以帮你？" and calls == []


def _thinking_families():
    for family in REGISTRY.values():
        try:
            family.layout([Message("assistant", "a", reasoning_content="r")], RenderOptions())
        except Exception:  # noqa: BLE001 - families without a reasoning format refuse it
            continue
        yield family


@pytest.mark.parametrize("family", list(_thinking_families()), ids=lambda f: f.name)
def test_reasoning_is_split_from_the_answer_and_streams_monotonically(family):
    messages = [Message("user", "1+1=?")]
    answer = Message("assistant", "2", reasoning_content="one plus one is two")
    opening, text = _reply_text(family, messages, answer, {})
    content, reasoning, _ = family.reply(opening + text)
    assert (content, reasoning) == ("2", "one plus one is two")
    for end in _token_ends(family, text):  # every prefix shows a prefix of the final parts
        so_far_content, so_far_reasoning = family.reply_so_far(opening + text[:end])
        assert content.startswith(so_far_content or "") and reasoning.startswith(so_far_reasoning or "")


@pytest.mark.parametrize("family", list(_tool_families()), ids=lambda f: f.name)
def test_streaming_never_shows_a_tool_call_as_content(family):
    opening, text = _reply_text(
        family, [Message("user", "q")], Message("assistant", "", tool_calls=(CALL,)), {"tools": TOOLS}
    )
    for end in _token_ends(family, text):
        assert (family.reply_so_far(opening + text[:end])[0] or "") == ""


def test_openai_message_carries_calls_as_json_and_the_reasoning():
    message, finish = openai_message(Reply("", "thought", [CALL]), "stop")
    assert finish == "tool_calls" and message["content"] is None and message["reasoning_content"] == "thought"
    call = message["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "北京", "days": 3}
    plain, finish = openai_message(Reply("hi"), "length")
    assert plain == {"role": "assistant", "content": "hi"} and finish == "length"


def _request(**fields) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def test_request_tools_calls_and_results_become_messages_and_options():
    body = json.dumps(
        {
            "model": "m",
            "tools": list(TOOLS),
            "chat_template_kwargs": {"enable_thinking": False},
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "北京"}, {"type": "text", "text": "天气？"}]},
                {"role": "assistant", "content": None, "reasoning_content": "need the tool", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "晴"},
            ],
        }
    ).encode()  # fmt: skip
    chat = parse_request(body, "m")
    messages = to_conversation(chat)
    assert [m.role for m in messages] == ["system", "user", "assistant", "observation"]
    assert messages[1].content == "北京天气？" and messages[2].reasoning_content == "need the tool"
    assert messages[2].tool_calls == (ToolCall("get_weather", {"city": "北京"}),)
    options = render_options(chat)
    assert options.enable_thinking is False and options.tools[0]["function"]["name"] == "get_weather"
    assert render_options(parse_request(_request(tools=list(TOOLS), tool_choice="none"), "m")).tools == ()


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "enable_thinking"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages",
        ),
    ],
)
def test_unsupported_requests_are_refused_by_field(fields, needle):
    with pytest.raises(ApiError) as error:
        parse_request(_request(**fields), "m")
    assert error.value.status == 400 and needle in error.value.message
