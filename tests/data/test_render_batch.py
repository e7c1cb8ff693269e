"""Batched rendering gives exactly the ids and mask of rendering one piece at a time, for every family.

`render_conversations` encodes the text pieces of many conversations in one tokenizer call; `prepare` renders
records 1,000 at a time that way. Checked against the rendering glmtune had before batching (each text piece its
own `tokenizer.encode` call) on every builtin tiny tokenizer, the GLM-4.5+ tokenizer with plain added tokens, and
the official tokenizers when the shared assets are there: multi-turn, tools, reasoning, empty texts, text holding
the special-token strings, and records over max_length (truncated or dropped) mixed into a batch.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import pytest
from conftest import SHARED_ASSETS
from release_conversations import CONVERSATIONS, TOOLS, option_grid, tiny_xml_tokenizer

from glmtune.checkpoints.load import load_tokenizer
from glmtune.checkpoints.tiny import builtin_path
from glmtune.data import prepare
from glmtune.data.formats import Example, iter_examples
from glmtune.data.prepare import labels_of, prepare_data, render_example, render_examples
from glmtune.data.render import render_conversation, render_conversations, thinking_options
from glmtune.errors import UsageError
from glmtune.families import Message, get_family, tiny_specs
from glmtune.families.base import RenderOptions
from glmtune.recipe import DataSection

OFFICIAL = {"glm-4-9b-chat": "glm4", "chatglm3-6b": "chatglm3", "chatglm2-6b": "chatglm2", "chatglm-6b": "chatglm"}  # fmt: skip
CASES = [*sorted(tiny_specs()), "tiny-xml", *OFFICIAL]


@functools.cache
def case(name: str):
    """(family, tokenizer) of a test case; skips an official folder that is not there."""
    if name == "tiny-xml":
        return get_family("glm5_3"), tiny_xml_tokenizer()
    if name in OFFICIAL:
        folder = SHARED_ASSETS / name
        if not (folder / "tokenizer_config.json").is_file():
            pytest.skip(f"official {name} tokenizer files not found at {folder}")
        family = get_family(OFFICIAL[name])
        return family, load_tokenizer(folder, family=family)
    family, _ = tiny_specs()[name]
    return family, load_tokenizer(builtin_path(name), family=family)


def injected(family) -> list[tuple[list[Message], RenderOptions]]:
    """Conversations whose text spells every special token of the family (it must stay text), and GLM-4 calls."""
    spelled = " ".join(family.special_tokens)
    return [
        ([Message("system", spelled), Message("user", f"a{spelled}b"), Message("assistant", f"<{spelled}>")],
         RenderOptions()),
        ([Message("user", "天气？"), Message("assistant", '{"city": "北京"}', metadata="get_weather"),
          Message("observation", spelled), Message("assistant", "晴")], RenderOptions()),
    ]  # fmt: skip


def conversations(family) -> list[tuple[list[Message], RenderOptions]]:
    """Every golden conversation in every option of the templates, where the family's format can hold it."""
    found = []
    for messages, tools in CONVERSATIONS.values():
        for options in option_grid(messages, tools):
            found.append((messages, options))
    found += injected(family)
    return [c for c in found if fits(family, *c)]


def fits(family, messages, options) -> bool:
    try:
        family.layout(messages, options)
    except UsageError:
        return False
    return True


def one_piece_at_a_time(messages, options, family, tokenizer, mask_history):
    """The rendering before batching: each text piece its own encode call."""
    pieces = family.layout(messages, options)
    last_turn = max((p.turn for p in pieces if p.train), default=-1)
    ids, mask = [], []
    for piece in pieces:
        if piece.special:
            piece_ids = [tokenizer.convert_tokens_to_ids(piece.text)]
        else:
            piece_ids = tokenizer.encode(piece.text, add_special_tokens=False, split_special_tokens=True)
        ids += piece_ids
        mask += [piece.train and (not mask_history or piece.turn == last_turn)] * len(piece_ids)
    return ids, mask


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mask_history", [False, True])
def test_a_batch_renders_as_each_piece_encoded_alone(name, mask_history):
    family, tokenizer = case(name)
    batch = conversations(family)
    assert len(batch) > 10
    rendered = render_conversations(batch, family, tokenizer, mask_history=mask_history)
    for (messages, options), sample in zip(batch, rendered, strict=True):
        expected = one_piece_at_a_time(messages, options, family, tokenizer, mask_history)
        assert (sample.ids, sample.mask) == expected, messages
        alone = render_conversation(messages, family, tokenizer, mask_history=mask_history, options=options)
        assert alone == sample


@pytest.mark.parametrize("name", CASES)
def test_special_token_strings_in_batched_text_stay_text(name):
    """Tokens the tokenizer flags special never come from text; plain added tokens match, as in the original."""
    family, tokenizer = case(name)
    batch = [c for c in injected(family) if fits(family, *c)]
    flagged = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}  # not <think> & co.
    assert flagged & set(family.special_tokens)
    rendered = render_conversations(batch, family, tokenizer)
    for (messages, options), sample in zip(batch, rendered, strict=True):
        pieces = family.layout(messages, options)
        for token in flagged & set(family.special_tokens):
            token_id = tokenizer.convert_tokens_to_ids(token)
            assert sample.ids.count(token_id) == sum(p.special and p.text == token for p in pieces), token


def examples(family) -> list[Example]:
    """Records of varied length, some far over the max_length the tests use, as prepare reads them."""
    long_text = "很长的问题 with words " * 40
    found = [
        Example(list(messages), f"d.jsonl:{i + 1}", options.tools)
        for i, (messages, options) in enumerate(conversations(family))
        if messages[-1].role == "assistant"
    ]
    found += [
        Example([Message("user", long_text), Message("assistant", "short")], "long.jsonl:1"),
        Example([Message("user", "q"), Message("assistant", long_text)], "long.jsonl:2"),
        Example([Message("user", long_text), Message("assistant", "a"), Message("user", "q2"),
                 Message("assistant", "a2")], "long.jsonl:3"),
    ]  # fmt: skip
    return found


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("overlong", ["truncate", "drop"])
@pytest.mark.parametrize("thinking", ["template", "keep", "off"])
def test_prepare_batches_equal_records_rendered_one_by_one(name, overlong, thinking):
    family, tokenizer = case(name)
    data = DataSection(max_length=40, overlong=overlong, thinking=thinking, mask_history=thinking == "keep")
    records = [e for e in examples(family) if fits(family, *thinking_options(e.messages, thinking, e.tools))]
    if not records:
        pytest.skip(f"{family.name} refuses data.thinking = {thinking!r} (a family fact, not batching)")
    batched = render_examples(records, data, family, tokenizer)
    assert batched == [render_example(record, data, family, tokenizer) for record in records]
    assert {"ok", "truncated" if overlong == "truncate" else "dropped"} <= {s.status for s in batched}


def test_a_refused_record_in_a_batch_is_named(tmp_path):
    family, tokenizer = case("tiny-chatglm2")  # ChatGLM2's format has no tool calls
    good = Example([Message("user", "q"), Message("assistant", "a")], "d.jsonl:1")
    call = Example([Message("user", "w?"), Message("assistant", "", tool_calls=CONVERSATIONS["tools"][0][2].tool_calls)],
                   "d.jsonl:2", TOOLS)  # fmt: skip
    with pytest.raises(UsageError, match=r"^d\.jsonl:2: "):
        render_examples([good, call, replace(good, origin="d.jsonl:3")], DataSection(), family, tokenizer)


def test_prepare_streams_in_batches_across_their_boundaries(tmp_path, monkeypatch):
    family, tokenizer = case("tiny-glm4")
    long_text = "long text " * 30
    records = [{"instruction": f"q{i} " + long_text * (i % 5 == 0), "output": f"a{i}"} for i in range(23)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    data = DataSection(train=[str(tmp_path / "d.jsonl")], max_length=32)
    monkeypatch.setattr(prepare, "RENDER_BATCH", 4)  # 23 records: 5 full batches and a short one
    prepared = prepare_data(data, family, tokenizer, tmp_path / "run" / "data")
    expected = [render_example(e, data, family, tokenizer)
                for e in iter_examples(data.train, "data.train", "auto", {}, None)]  # fmt: skip
    assert [s.status for s in expected].count("truncated") == 5
    rows = prepared.splits["train"]
    assert rows["input_ids"] == [s.ids for s in expected]
    assert rows["labels"] == [labels_of(s) for s in expected]
    assert prepared.stats["train"]["truncated"] == 5
