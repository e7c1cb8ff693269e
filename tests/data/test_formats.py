"""Format readers, detection, placeholders, and data errors that name file and line."""

import json

import pytest

from glmtune.data.formats import read_examples
from glmtune.errors import UsageError
from glmtune.families import Message


def read(tmp_path, name, content, fmt="auto", variables=None, system=None):
    path = tmp_path / name
    path.write_text(
        content if isinstance(content, str) else json.dumps(content, ensure_ascii=False), encoding="utf-8"
    )
    return read_examples([str(path)], "data.train", fmt, variables or {}, system)


def jsonl(*records):
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n"


def test_alpaca_with_input_history_and_system(tmp_path):
    [example] = read(
        tmp_path,
        "a.json",
        [
            {
                "instruction": "Translate",
                "input": "你好",
                "output": "Hello",
                "system": "S",
                "history": [["q0", "a0"]],
            }
        ],
    )
    assert example.messages == [
        Message("system", "S"),
        Message("user", "q0"),
        Message("assistant", "a0"),
        Message("user", "Translate\n你好"),
        Message("assistant", "Hello"),
    ]


def test_context_target(tmp_path):
    [example] = read(
        tmp_path, "c.jsonl", jsonl({"context": "Instruction: x\nAnswer: ", "target": '["水果"]'})
    )
    assert example.messages == [Message("user", "Instruction: x\nAnswer: "), Message("assistant", '["水果"]')]


@pytest.mark.parametrize("key", ["messages", "conversations"])
def test_messages(tmp_path, key):
    record = {
        key: [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ]
    }
    [example] = read(tmp_path, "m.jsonl", jsonl(record))
    assert [m.role for m in example.messages] == ["system", "user", "assistant"]


def test_sharegpt(tmp_path):
    record = {
        "conversations": [
            {"from": "human", "value": "u"},
            {"from": "function_call", "value": '{"name": "f", "arguments": {"x": 1}}'},
            {"from": "observation", "value": "o"},
            {"from": "gpt", "value": "a"},
        ]
    }
    [example] = read(tmp_path, "s.jsonl", jsonl(record))
    assert [m.role for m in example.messages] == ["user", "assistant", "observation", "assistant"]
    assert [(c.name, c.arguments) for c in example.messages[1].tool_calls] == [("f", {"x": 1})]


def test_folder_and_default_system(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.jsonl").write_text(jsonl({"instruction": "i", "output": "o"}), encoding="utf-8")
    (tmp_path / "d" / "2.json").write_text(json.dumps([{"context": "c", "target": "t"}]), encoding="utf-8")
    examples = read_examples([str(tmp_path / "d")], "data.train", "auto", {}, "SYS")
    assert len(examples) == 2 and all(e.messages[0] == Message("system", "SYS") for e in examples)


def test_placeholders_filled(tmp_path):
    [example] = read(
        tmp_path,
        "p.json",
        [{"instruction": "你是{{name}}吗", "output": "我是{{ name }}，由{{author}}开发"}],
        variables={"name": "小G", "author": "ACME"},
    )
    assert example.messages[-1].content == "我是小G，由ACME开发"


def test_unfilled_placeholder_is_named(tmp_path):
    with pytest.raises(UsageError, match=r"p\.json record 0: placeholder \{\{author\}\} has no value"):
        read(tmp_path, "p.json", [{"instruction": "q", "output": "by {{author}}"}], variables={"name": "x"})


def test_malformed_json_line_names_file_and_line(tmp_path):
    with pytest.raises(UsageError, match=r"bad\.jsonl:2: invalid JSON line"):
        read(tmp_path, "bad.jsonl", jsonl({"instruction": "i", "output": "o"}) + '{"instruction": "i", \n')


def test_missing_field(tmp_path):
    with pytest.raises(UsageError, match=r"m\.jsonl:1: missing field 'output' \(format alpaca\)"):
        read(tmp_path, "m.jsonl", jsonl({"instruction": "i"}))


def test_empty_answer(tmp_path):
    with pytest.raises(UsageError, match=r"e\.jsonl:1: empty answer"):
        read(tmp_path, "e.jsonl", jsonl({"context": "c", "target": "  "}))


def test_unknown_format_and_wrong_type(tmp_path):
    with pytest.raises(UsageError, match="cannot tell the data format"):
        read(tmp_path, "u.jsonl", jsonl({"question": "q", "answer": "a"}))
    with pytest.raises(UsageError, match="field 'output' must be a string"):
        read(tmp_path, "t.jsonl", jsonl({"instruction": "i", "output": 3}))


def test_missing_data_file(tmp_path):
    with pytest.raises(UsageError, match="data file .* not found"):
        read_examples([str(tmp_path / "none.jsonl")], "data.train", "auto", {}, None)


def test_non_utf8_file_and_byte_order_mark(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes('{"instruction": "caf\xe9", "output": "o"}\n'.encode("latin-1"))
    with pytest.raises(UsageError, match=r"latin\.jsonl: not UTF-8 text"):
        read_examples([str(tmp_path / "latin.jsonl")], "data.train", "auto", {}, None)
    (tmp_path / "bom.jsonl").write_bytes(
        "\ufeff".encode() + jsonl({"instruction": "i", "output": "o"}).encode()
    )
    assert len(read_examples([str(tmp_path / "bom.jsonl")], "data.train", "auto", {}, None)) == 1


def test_null_content_is_an_error_not_the_text_none(tmp_path):
    record = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": None}]}
    with pytest.raises(
        UsageError, match=r"n\.jsonl:1: messages\[1\]\.content must be a string, got NoneType"
    ):
        read(tmp_path, "n.jsonl", jsonl(record))
