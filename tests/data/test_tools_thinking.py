"""Tool calls, tool results, tool lists and reasoning: read from every data format, rendered in each family's own
format (or refused by name), `[data] thinking`, the loss mask on a tiny tokenizer with the GLM-4.5+ tokens, and
each family's reply parser round-tripping its own rendered turns."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from release_conversations import CALL, CONVERSATIONS, SEARCH, TOOLS, tiny_xml_tokenizer

from glmtune.data.formats import read_examples
from glmtune.data.render import render_conversation, thinking_options
from glmtune.errors import UsageError
from glmtune.families import Message, get_family
from glmtune.families.base import RenderOptions, ToolCall

NEW_FAMILIES = ("glm4_5", "glm4_7", "glm5", "glm5_2", "glm5_3")


def _write(tmp_path, name: str, records) -> str:
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return str(path)


def _text(family, messages, **options) -> str:
    return "".join(p.text for p in family.layout(messages, RenderOptions(**options)))


# --- reading -------------------------------------------------------------------------------------------------------


def test_openai_messages_carry_calls_reasoning_results_and_tools(tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "reasoning_content": "use the tool",
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "tools": list(TOOLS),
    }  # fmt: skip
    (example,) = read_examples([_write(tmp_path, "d.jsonl", [record])], "data.train", "auto", {}, None)
    call = example.messages[1]
    assert (call.content, call.reasoning_content, call.tool_calls) == ("", "use the tool", (CALL,))
    assert example.messages[2] == Message("observation", "sunny")
    assert example.tools == TOOLS


def test_sharegpt_glaive_function_call_observation_and_tools_column(tmp_path):
    # LLaMA-Factory's glaive_toolcall demo: bare function objects in a JSON string, calls as JSON turns
    record = {
        "conversations": [
            {"from": "human", "value": "Weather?"},
            {
                "from": "function_call",
                "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}),
            },
            {"from": "observation", "value": '{"temp": 20}'},
            {"from": "gpt", "value": "20 degrees."},
        ],
        "tools": json.dumps(
            [{"name": "get_weather", "description": "weather", "parameters": {"type": "object"}}]
        ),
    }
    (example,) = read_examples([_write(tmp_path, "g.json", [record])], "data.train", "auto", {}, None)
    assert [m.role for m in example.messages] == ["user", "assistant", "observation", "assistant"]
    assert example.messages[1].tool_calls == (ToolCall("get_weather", {"city": "Paris"}),)
    assert example.messages[1].content == ""
    assert example.tools == ({"type": "function", "function": {"name": "get_weather", "description": "weather",
                                                                 "parameters": {"type": "object"}}},)  # fmt: skip


def test_alpaca_tools_column_and_inline_reasoning(tmp_path):
    record = {"instruction": "2+2?", "output": "<think>add</think>4", "tools": [TOOLS[0]]}
    (example,) = read_examples([_write(tmp_path, "a.json", [record])], "data.train", "auto", {}, None)
    assert example.tools == (TOOLS[0],)
    assert "<think>add</think>4" in _text(get_family("glm4_7"), example.messages)


@pytest.mark.parametrize(
    ("turn", "problem"),
    [
        ({"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]},
         "not valid JSON"),
        ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]},
         "must be a JSON object"),
        ({"role": "user", "content": "q", "reasoning_content": "r"}, "reasoning_content"),
    ],
)  # fmt: skip
def test_bad_tool_data_names_the_record(tmp_path, turn, problem):
    record = {"messages": [{"role": "user", "content": "q"}, turn, {"role": "assistant", "content": "a"}]}
    path = _write(tmp_path, "bad.jsonl", [record])
    with pytest.raises(UsageError, match=rf"bad.jsonl:1: .*{problem}"):
        read_examples([path], "data.train", "auto", {}, None)


# --- families without the format refuse; older families render their own ------------------------------------------


@pytest.mark.parametrize("name", ["chatglm", "chatglm2"])
@pytest.mark.parametrize("kind", ["tools", "call", "result"])
def test_families_without_tool_format_refuse_tool_data_by_name(name, kind):
    messages = [Message("user", "q"), Message("assistant", "a")]
    options = RenderOptions(tools=TOOLS) if kind == "tools" else RenderOptions()
    if kind == "call":
        messages[1] = Message("assistant", "", tool_calls=(CALL,))
    if kind == "result":
        messages += [Message("observation", "x"), Message("assistant", "b")]
    with pytest.raises(UsageError, match="no tool format.*model.family"):
        get_family(name).layout(messages, options)


def test_glm4_writes_calls_as_a_name_line_and_json_and_lists_tools():
    messages = [
        Message("user", "w?"),
        Message("assistant", "", tool_calls=(CALL,)),
        Message("observation", "x"),
    ]
    text = _text(get_family("glm4"), messages, tools=TOOLS)
    assert '<|assistant|>get_weather\n{"city": "Paris", "days": 3}<|observation|>\nx' in text
    assert "## get_weather\n\n" + json.dumps(TOOLS[0]["function"], ensure_ascii=False, indent=4) in text
    with pytest.raises(UsageError, match="no reasoning format"):
        get_family("glm4").layout(
            [Message("user", "q"), Message("assistant", "a", reasoning_content="r")], RenderOptions()
        )


def test_chatglm3_writes_calls_in_its_metadata_line_and_tools_in_the_system_turn():
    messages = [
        Message("system", "Use tools."),
        Message("user", "w?"),
        Message("assistant", "", tool_calls=(CALL,)),
    ]
    text = _text(get_family("chatglm3"), messages, tools=TOOLS)
    functions = [tool["function"] for tool in TOOLS]  # ChatGLM3's demos list bare function objects
    assert "<|system|>\nUse tools.\n" + json.dumps(functions, indent=4, ensure_ascii=False) in text
    assert "<|assistant|>get_weather\n```python\ntool_call(city='Paris', days=3)\n```" in text


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_a_glm4_style_metadata_call_renders_as_the_xml_call_it_means(name):
    family, user = get_family(name), Message("user", "w?")
    legacy = Message("assistant", '{"city": "Paris", "days": 3}', metadata="get_weather")
    assert _text(family, [user, legacy]) == _text(
        family, [user, Message("assistant", "", tool_calls=(CALL,))]
    )
    with pytest.raises(UsageError, match="message 2 has metadata 'get_weather'.*tool_calls"):
        family.layout([user, Message("assistant", "Paris", metadata="get_weather")], RenderOptions())


# --- thinking ------------------------------------------------------------------------------------------------------


def test_thinking_template_clears_history_keep_keeps_it_off_drops_it():
    conversation, _ = CONVERSATIONS["history_field"]

    def rendered(name: str, mode: str) -> str:
        messages, options = thinking_options(conversation, mode)
        return "".join(p.text for p in get_family(name).layout(messages, options))

    assert "r1" not in rendered("glm4_7", "template") and "<think>r2</think>a2" in rendered(
        "glm4_7", "template"
    )
    assert "<think>r1</think>a1" in rendered("glm4_7", "keep") and "<think>r2</think>a2" in rendered(
        "glm4_7", "keep"
    )
    assert "r1" not in rendered("glm4_7", "off") and "r2" not in rendered("glm4_7", "off")
    assert rendered("glm4_5", "off").count("/nothink") == 2


@pytest.mark.parametrize(("name", "mode"), [("glm4_5", "keep"), ("glm5_3", "off")])
def test_a_switch_the_template_lacks_is_refused(name, mode):
    messages, options = thinking_options(CONVERSATIONS["history_field"][0], mode)
    with pytest.raises(UsageError, match="data.thinking"):
        get_family(name).layout(messages, options)


# --- the loss mask on a tiny tokenizer with the GLM-4.5+ tokens ------------------------------------------------------


@pytest.fixture(scope="module")
def xml_tokenizer():
    return tiny_xml_tokenizer()


def _own_text(family, messages, options) -> str:
    """The rule, applied to text: the last assistant turn's own text is what follows its role tag minus what the
    generation prompt writes (GLM-4.7+'s `<think>`), an empty think block included; then the token that ends the
    turn."""
    pieces = family.layout(messages, options)
    text = "".join(p.text for p in pieces if not p.appended)
    own = text.rsplit("<|assistant|>", 1)[1]
    prompt = "".join(
        p.text for p in family.layout(messages[:-1], replace(options, add_generation_prompt=True))
    )
    return own.removeprefix(prompt.rsplit("<|assistant|>", 1)[1]) + pieces[-1].text


TRAINABLE = [n for n, (m, _) in CONVERSATIONS.items() if m[-1].role == "assistant"]


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_mask_covers_the_assistants_own_tokens_and_its_turn_end(xml_tokenizer, name):
    family = get_family(name)
    for conversation in TRAINABLE:
        messages, tools = CONVERSATIONS[conversation]
        options = RenderOptions(tools=tools)
        rendered = render_conversation(messages, family, xml_tokenizer, options=options)
        text = "".join(p.text for p in family.layout(messages, options))
        # the ids are exactly the tokenizer's encoding of the rendered text, as apply_chat_template would make them
        assert rendered.ids == xml_tokenizer.encode(text, add_special_tokens=False), conversation
        last = render_conversation(messages, family, xml_tokenizer, options=options, mask_history=True)
        trained = [i for i, m in zip(last.ids, last.mask, strict=True) if m]
        assert xml_tokenizer.decode(trained) == _own_text(family, messages, options), (name, conversation)
        everything = xml_tokenizer.decode([i for i, m in zip(rendered.ids, rendered.mask, strict=True) if m])
        for message in messages:
            if message.role != "assistant" and message.content.strip():
                assert message.content.strip() not in everything, (name, conversation, message)


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_an_answers_empty_think_block_is_trained_after_the_prompt_and_never_in_history(xml_tokenizer, name):
    """Thinking on, the model writes the empty block of an answer without reasoning after the generation prompt
    (GLM-4.7+'s prompt writes its `<think>`): trained, so a tuned model learns to close it. History's is not."""
    family = get_family(name)
    messages, _ = CONVERSATIONS["history_plain"]
    rendered = render_conversation(messages, family, xml_tokenizer)
    trained = xml_tokenizer.decode([i for i, m in zip(rendered.ids, rendered.mask, strict=True) if m])
    expected = (
        "\na1<|user|>\n<think></think>\na2<|user|>" if name == "glm4_5" else "a1<|user|></think>a2<|user|>"
    )
    assert trained == expected
    # thinking off, the generation prompt writes the whole block: nothing of it is trained (GLM-5.3 always thinks)
    if name != "glm5_3":
        off = render_conversation(
            messages, family, xml_tokenizer, options=RenderOptions(enable_thinking=False)
        )
        trained_off = xml_tokenizer.decode([i for i, m in zip(off.ids, off.mask, strict=True) if m])
        assert "think>" not in trained_off
    messages, _ = CONVERSATIONS["reasoning_field"]
    rendered = render_conversation(messages, family, xml_tokenizer)
    trained = xml_tokenizer.decode([i for i, m in zip(rendered.ids, rendered.mask, strict=True) if m])
    opens = "\n<think>" if name == "glm4_5" else ""  # GLM-4.5 writes its own <think>; later prompts write it
    reasoning = "add two and two" if name in ("glm4_5", "glm4_7") else "\nadd two and two\n"
    assert trained.startswith(opens + reasoning + "</think>")


# --- reply parsers ---------------------------------------------------------------------------------------------------


REPLIES = {
    "calls_and_reasoning": Message(
        "assistant", "Let me look.", reasoning_content="I need it.", tool_calls=(CALL, SEARCH)
    ),
    "call": Message("assistant", "", tool_calls=(CALL,)),
    "reasoning": Message("assistant", "It is 20°C.", reasoning_content="easy"),
    "answer": Message("assistant", "It is 20°C."),
}
ROUND_TRIPS = [(name, reply) for name in NEW_FAMILIES for reply in REPLIES] + [
    (name, reply)
    for name in ("glm4", "chatglm3")
    for reply in ("call", "answer")  # one call per turn, no reasoning
]


@pytest.mark.parametrize(("name", "reply"), ROUND_TRIPS)
def test_parse_reply_round_trips_a_rendered_assistant_turn(name, reply):
    family, message = get_family(name), REPLIES[reply]
    pieces = family.layout([Message("user", "Weather?"), message], RenderOptions(tools=TOOLS))
    text = "".join(p.text for p in pieces if not p.appended)
    assert family.parse_reply is not None
    content, reasoning, calls = family.parse_reply(text.rsplit("<|assistant|>", 1)[1], TOOLS)
    assert (content, reasoning, calls) == (
        message.content,
        message.reasoning_content,
        list(message.tool_calls),
    )


def test_xml_parser_reads_values_by_schema_and_json():
    parse = get_family("glm4_7").parse_reply
    assert parse is not None
    text = "</think><tool_call>get_weather<arg_key>city</arg_key><arg_value>42</arg_value>" \
        "<arg_key>days</arg_key><arg_value>2</arg_value></tool_call>"  # fmt: skip
    assert parse(text, TOOLS) == ("", None, [ToolCall("get_weather", {"city": "42", "days": 2})])


@pytest.mark.parametrize(("thinking", "counted"), [("template", 2), ("off", 3), ("keep", None)])
def test_prepare_counts_the_samples_whose_reasoning_thinking_leaves_out(
    tmp_path, xml_tokenizer, thinking, counted
):
    from glmtune.data.prepare import prepare_data
    from glmtune.recipe import DataSection

    def turn(q, a, reasoning=None):
        return [
            {"role": "user", "content": q},
            {"role": "assistant", "content": a, "reasoning_content": reasoning},
        ]

    records = [
        {"messages": turn("q1", "a1", "r1") + turn("q2", "a2")},  # past reasoning: the template clears it
        {"messages": turn("q1", "<think>r1</think>a1") + turn("q2", "a2", "r2")},  # inline, past
        {"messages": turn("q", "a", "r")},  # the last turn's reasoning is trained in "template"
        {"messages": turn("q", "a")},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    data = DataSection(train=[str(path)], thinking=thinking)
    stats = prepare_data(data, get_family("glm4_7"), xml_tokenizer, tmp_path / "data").stats["train"]
    key = {"template": "past reasoning cleared", "off": "reasoning dropped"}.get(thinking)
    assert (stats.get(key) if key else None) == counted
    assert not {"past reasoning cleared", "reasoning dropped"} - {key} & set(stats)
