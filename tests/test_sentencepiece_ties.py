"""ChatGLM-6B v1's unigram tokenizer on repeated substrings, against the original SentencePiece model.

Repeated patterns give segmentations whose pieces are the same and only their order differs ("eeeee": official
[▁, eee, ee], glmtune [▁, ee, eee]). SentencePiece chooses among them by float32 rounding of its running path scores;
`tokenizers`' Unigram sums in float64 (after parsing scores from tokenizer.json) and breaks the exact tie by
position. No change of piece scores can move that choice: every permutation of the same pieces gets the same sum
of scores, whatever they are. So this test records the known gap (strict xfail: it fails loudly once fixed).
Needs the shared asset chatglm-6b/ice_text.model; skips without it.
"""

from __future__ import annotations

import itertools

import pytest
from conftest import SHARED_ASSETS

from glmtune.families import CHATGLM
from glmtune.families.original_tokenizer import load_original_tokenizer, reference_encode

ALPHABET = "ah哈e"
PATTERNS = ["".join(p) for n in range(1, 5) for p in itertools.product(ALPHABET, repeat=n)]
STRINGS = [pattern * times for pattern in PATTERNS for times in range(2, 13)]


@pytest.fixture(scope="module")
def official():
    folder = SHARED_ASSETS / "chatglm-6b"
    if not (folder / "ice_text.model").is_file():
        pytest.skip(
            f"official ChatGLM-6B ice_text.model not found in {folder} (or set GLMTUNE_SHARED_ASSETS)"
        )
    return folder


@pytest.fixture(scope="module")
def mismatches(official):
    assert CHATGLM.original is not None
    spec = CHATGLM.original.tokenizer
    tokenizer = load_original_tokenizer(official, spec)
    got = tokenizer(STRINGS, add_special_tokens=False)["input_ids"]
    return [(s, g) for s, g in zip(STRINGS, got, strict=True) if g != reference_encode(official, spec, s)]


def test_the_differences_are_orders_of_the_same_pieces(official, mismatches):
    assert CHATGLM.original is not None
    for text, ids in mismatches:
        assert sorted(ids) == sorted(reference_encode(official, CHATGLM.original.tokenizer, text)), text


@pytest.mark.xfail(strict=True, reason="known: float32 path scores in SentencePiece vs float64 in tokenizers")
def test_repeated_patterns_equal_the_original(mismatches):
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ, e.g. {mismatches[:3]}"
