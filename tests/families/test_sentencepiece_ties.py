"""The unigram tokenizer kind (ChatGLM-6B v1) gives SentencePiece's own ids, on repeated substrings above all.

Repeated patterns give segmentations with the same pieces in another order ("eeeee": SentencePiece [▁, eee, ee],
`tokenizers`' Unigram [▁, ee, eee]): SentencePiece chooses among them by float32 rounding of its running path scores,
`tokenizers` sums in float64 and breaks the exact tie by position, and no change of piece scores can move that
choice. So the kind encodes with the `sentencepiece` library itself; these tests hold it to SentencePiece's ids.
The official ice_text.model (shared asset chatglm-6b/) is used when present; the tiny model trained here always.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
import sentencepiece
from conftest import SHARED_ASSETS

from glmtune.families import CHATGLM
from glmtune.families.original_tokenizer import load_original_tokenizer, reference_encode
from glmtune.families.sentencepiece import apply_replacements, train_tiny_unigram

ALPHABET = "ah哈e"
PATTERNS = ["".join(p) for n in range(1, 5) for p in itertools.product(ALPHABET, repeat=n)]
STRINGS = [pattern * times for pattern in PATTERNS for times in range(2, 13)]
assert CHATGLM.original is not None
SPEC = CHATGLM.original.tokenizer


@pytest.fixture(scope="module")
def official():
    folder = SHARED_ASSETS / "chatglm-6b"
    if not (folder / "ice_text.model").is_file():
        pytest.skip(
            f"official ChatGLM-6B ice_text.model not found in {folder} (or set GLMTUNE_SHARED_ASSETS)"
        )
    return folder


def test_repeated_patterns_equal_the_original(official):
    tokenizer = load_original_tokenizer(official, SPEC)
    got = tokenizer(STRINGS, add_special_tokens=False)["input_ids"]
    mismatches = [
        (s, g) for s, g in zip(STRINGS, got, strict=True) if g != reference_encode(official, SPEC, s)
    ]
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ, e.g. {mismatches[:3]}"
    assert tokenizer.encode("eeeee", add_special_tokens=False) == [5, 28708, 3135]  # issue #7's example


# ------------------------------------------------------------------------------------------- tiny, no shared assets

TINY_CORPUS = [
    "hahaha hello world, eee ee e. 哈哈哈，你好世界！",
    "def f(x):\n\treturn x  *  2\n    pass",
    "今天天气很好，我们去公园散步吧。学习编程需要多练习。",
    "the quick brown fox jumps over the lazy dog; aaaa bbbb abab",
] * 20
MIXED = [
    "line1\nline2\n\n\nline5",
    "\t\ttabs\t and\tmore",
    "a" + " " * 81 + "b" + " " * 165 + "c",
    "   leading and trailing   ",
    "中文和English混合，还有 emoji 😀 与 ｆｕｌｌｗｉｄｔｈ",
    "[gMASK]<sop> are text here, <n> too",
    "",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A unigram model trained in-process with the family's special and replacement pieces, offset by 7 ids."""
    folder = tmp_path_factory.mktemp("tiny-unigram")
    spec = replace(SPEC, vocab_file="tiny.model")
    (folder / "tiny.model").write_bytes(train_tiny_unigram(TINY_CORPUS, spec))
    (folder / "tokenizer_config.json").write_text(json.dumps({spec.id_offset_key: 7}))
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tiny.model"))
    return folder, spec, load_original_tokenizer(folder, spec), processor


def test_tiny_ids_equal_sentencepiece_on_repeats_and_mixed_text(tiny):
    folder, spec, tokenizer, processor = tiny
    texts = STRINGS + MIXED + TINY_CORPUS[:4]
    got = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    expected = [[i + 7 for i in processor.encode(apply_replacements(text, spec))] for text in texts]
    mismatches = [(t, g, e) for t, g, e in zip(texts, got, expected, strict=True) if g != e]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]}"
    assert any(processor.piece_to_id("<|blank_80|>") + 7 in ids for ids in got)  # the replacements ran


def test_tiny_special_tokens_sit_at_their_pieces_and_split_text(tiny):
    folder, spec, tokenizer, processor = tiny
    for name in spec.special_tokens:
        assert tokenizer.convert_tokens_to_ids(name) == processor.piece_to_id(name) + 7, name
    gmask, sop = tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])
    ids = tokenizer.encode("hello[gMASK]<sop>\nworld", add_special_tokens=False)
    assert ids == reference_encode(folder, spec, "hello") + [gmask, sop] + reference_encode(
        folder, spec, "\nworld"
    )


def test_tiny_decode_undoes_the_replacements(tiny):
    _, _, tokenizer, _ = tiny
    for text in ["line1\nline2\n\n\nline5", "\t\ttabs\t and\tmore", "a" + " " * 81 + "b", "哈哈哈 hello"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    sop, eop = tokenizer.convert_tokens_to_ids(["<sop>", "<eop>"])
    answer = tokenizer.encode("hello\n  world", add_special_tokens=False)
    assert tokenizer.decode([sop, *answer, eop]) == "<sop> hello\n  world<eop>"  # the answer's dummy prefix
    assert tokenizer.decode([sop, *answer, eop], skip_special_tokens=True) == "hello\n  world"


def test_tiny_saved_folder_reloads_with_the_same_ids(tiny, tmp_path):
    from transformers import AutoTokenizer

    _, _, tokenizer, _ = tiny
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    module, name = config["auto_map"]["AutoTokenizer"][0].split(".")
    assert (tmp_path / f"{module}.py").is_file() and name == type(tokenizer).__name__
    reloaded = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    texts = STRINGS[:200] + MIXED
    for split in (False, True):
        assert (
            reloaded(texts, add_special_tokens=False, split_special_tokens=split)["input_ids"]
            == tokenizer(texts, add_special_tokens=False, split_special_tokens=split)["input_ids"]
        )
    assert len(reloaded) == len(tokenizer) and reloaded.eos_token_id == tokenizer.eos_token_id


def test_tiny_tokenizer_pickles_with_its_model(tiny):
    """prepare's workers and datasets' fingerprints pickle the tokenizer: the SentencePiece model goes along."""
    import pickle

    _, _, tokenizer, _ = tiny
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert (
        copy(MIXED, add_special_tokens=False)["input_ids"]
        == tokenizer(MIXED, add_special_tokens=False)["input_ids"]
    )
