"""prepare streams: records read in batches into an Arrow file, the same samples as rendering each record, a bad
record at the end still fails with file:line before anything is written; peak memory is measured by
tools/prepare_memory.py (figures in docs/robustness.md), never asserted here."""

import json

import pytest

from glmtune.data.formats import iter_examples
from glmtune.data.prepare import labels_of, prepare_data, render_example
from glmtune.errors import UsageError
from glmtune.recipe import DataSection


def write_jsonl(path, records, tail=""):
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + tail, encoding="utf-8"
    )


RECORDS = [{"instruction": f"问题 {i}: what is {i} + 1?", "output": f"{i + 1}"} for i in range(300)]


def test_streamed_samples_equal_rendered_records(tmp_path, tokenizer, glm4):
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    data = DataSection(train=[str(tmp_path / "d.jsonl")], max_length=64)
    prepared = prepare_data(data, glm4, tokenizer, tmp_path / "run" / "data")
    expected = [
        render_example(e, data, glm4, tokenizer) for e in iter_examples(data.train, "k", "auto", {}, None)
    ]
    rows = prepared.splits["train"]
    assert len(rows) == len(RECORDS) == prepared.stats["train"]["records"]
    assert rows["input_ids"] == [s.ids for s in expected] and rows["labels"] == [
        labels_of(s) for s in expected
    ]
    assert list((tmp_path / "run" / "data" / "train").glob("data-*.arrow"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["data"]  # no build or staging folder left


def test_a_bad_last_line_fails_with_its_number_and_writes_nothing(tmp_path, tokenizer, glm4):
    write_jsonl(tmp_path / "d.jsonl", RECORDS, tail='{"instruction": "q", "output": \n')
    data = DataSection(train=[str(tmp_path / "d.jsonl")], max_length=64)
    with pytest.raises(UsageError, match=rf"d.jsonl:{len(RECORDS) + 1}: invalid JSON line"):
        prepare_data(data, glm4, tokenizer, tmp_path / "run" / "data")
    assert not list((tmp_path / "run").iterdir())


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\x1c"])
def test_unicode_line_separators_inside_strings_are_text(tmp_path, tokenizer, glm4, separator):
    write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"a{separator}b", "output": f"c{separator}d"}])
    data = DataSection(train=[str(tmp_path / "d.jsonl")], max_length=64)
    prepared = prepare_data(data, glm4, tokenizer, tmp_path / "run" / "data")
    assert prepared.stats["train"]["samples"] == 1
    assert separator in tokenizer.decode(prepared.splits["train"][0]["input_ids"])


def test_an_empty_file_says_so(tmp_path, tokenizer, glm4):
    (tmp_path / "d.jsonl").write_text("\n\n")
    with pytest.raises(UsageError, match="hold no records"):
        prepare_data(
            DataSection(train=[str(tmp_path / "d.jsonl")]), glm4, tokenizer, tmp_path / "run" / "data"
        )


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 20])
def test_a_json_list_streams_in_chunks_to_the_records_json_load_reads(tmp_path, monkeypatch, chunk):
    import glmtune.data.formats as formats
    import glmtune.data.records as records

    monkeypatch.setattr(records, "CHUNK", chunk)  # records straddle every chunk boundary
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS[:40], ensure_ascii=False, indent=2), encoding="utf-8")
    read = [e.messages for e in iter_examples([str(path)], "k", "auto", {}, None)]
    assert read == [e.messages for e in formats.read_examples([str(path)], "k", "alpaca", {}, None)]
    assert [m[-1].content for m in read] == [r["output"] for r in RECORDS[:40]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[\n{"instruction": "q", "output": "a"},\n{"instruction": "q",\n}\n]', r"d\.json:4: invalid JSON"),
        ('[{"instruction": "q", "output": "a"} {"b": 1}]', r"d\.json:1: invalid JSON \(expected ',' or ']'"),
        (
            '[{"instruction": "q", "output": "a"}',
            r"d\.json:1: invalid JSON \(the list of records is not closed",
        ),
        ('{"instruction": "q", "output": "a"}', r"d\.json: a \.json data file must hold a list of records"),
        ('[{"instruction": "q", "output": "a"}] []', r"d\.json: invalid JSON \(text after the \]"),
    ],
)
def test_a_broken_json_list_names_the_file_and_line(tmp_path, monkeypatch, text, message):
    import glmtune.data.records as records

    monkeypatch.setattr(records, "CHUNK", 7)
    (tmp_path / "d.json").write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        list(iter_examples([str(tmp_path / "d.json")], "k", "auto", {}, None))
