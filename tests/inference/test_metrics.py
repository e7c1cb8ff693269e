"""glmtune.inference.metrics: hand-checked BLEU/ROUGE/exact-match cases, jieba segmentation, edge cases, import cost."""

from __future__ import annotations

import subprocess
import sys

import pytest

from glmtune.inference.metrics import METRIC_NOTES, generation_scores, segment

KEYS = {"bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match"}


def test_identical_strings_score_100_everywhere() -> None:
    texts = ["the quick brown fox jumps over the lazy dog", "我爱北京天安门，天安门上太阳升。"]
    scores = generation_scores(texts, list(texts))
    assert set(scores) == KEYS
    for key, value in scores.items():
        assert value == pytest.approx(100.0), key


def test_disjoint_strings_score_0_rouge_and_exact_match() -> None:
    scores = generation_scores(["apple banana cherry"], ["violin trumpet drum"])
    assert scores["rouge-1"] == 0.0
    assert scores["rouge-2"] == 0.0
    assert scores["rouge-l"] == 0.0
    assert scores["exact_match"] == 0.0


def test_disjoint_chinese_scores_0_everywhere() -> None:
    # No character in common, so character-level BLEU has no unigram match either.
    scores = generation_scores(["今天天气很好"], ["我喜欢吃苹果"])
    assert scores == {key: 0.0 for key in KEYS}


def test_partial_overlap_rouge_by_hand() -> None:
    # prediction: the cat sat        (3 words)   reference: the cat ran away   (4 words)
    # ROUGE-1: overlap {the, cat} = 2 -> P = 2/3, R = 2/4, F1 = 2PR/(P+R) = (2/3)/(7/6) = 4/7 = 57.142857...
    # ROUGE-2: bigrams (the cat),(cat sat) vs (the cat),(cat ran),(ran away): overlap 1 -> P = 1/2, R = 1/3,
    #          F1 = 2*(1/6)/(5/6) = 2/5 = 40.0
    # ROUGE-L: LCS = "the cat" = 2 -> same P, R as ROUGE-1 -> 4/7
    scores = generation_scores(["the cat sat"], ["the cat ran away"])
    assert scores["rouge-1"] == pytest.approx(100 * 4 / 7)
    assert scores["rouge-2"] == pytest.approx(40.0)
    assert scores["rouge-l"] == pytest.approx(100 * 4 / 7)
    assert scores["exact_match"] == 0.0
    assert 0.0 < scores["bleu-4"] < 100.0


def test_bleu_is_character_level_method3_like_chatglm() -> None:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    pred, ref = "北京是中国的首都", "中国的首都是北京"
    expected = sentence_bleu([list(ref)], list(pred), smoothing_function=SmoothingFunction().method3)
    assert generation_scores([pred], [ref])["bleu-4"] == pytest.approx(100 * expected)


def test_scores_are_averaged_over_samples() -> None:
    # Sample 1 is identical (ROUGE-1 100), sample 2 is the hand-computed 4/7 case above.
    scores = generation_scores(["same words here", "the cat sat"], ["same words here", "the cat ran away"])
    assert scores["rouge-1"] == pytest.approx((100 + 100 * 4 / 7) / 2)


def test_chinese_is_segmented_into_words() -> None:
    tokens = segment("我爱北京天安门")
    assert "北京" in tokens or "天安门" in tokens
    assert "".join(tokens) == "我爱北京天安门"


def test_segment_drops_whitespace_tokens() -> None:
    assert segment("the  cat\tsat \r\n") == ["the", "cat", "sat"]
    assert segment("") == []
    assert segment("   ") == []


def test_exact_match_averages_and_strips() -> None:
    predictions = ["yes", "  no\n", "maybe", "yes"]
    references = ["yes", "no", "no", "no"]
    assert generation_scores(predictions, references)["exact_match"] == 50.0


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="length"):
        generation_scores(["a", "b"], ["a"])


def test_empty_lists_raise() -> None:
    with pytest.raises(ValueError):
        generation_scores([], [])


def test_empty_prediction_scores_0_for_that_sample() -> None:
    scores = generation_scores([""], ["the reference answer"])
    assert scores == {key: 0.0 for key in KEYS}
    # Averaged with a perfect sample, the empty one counts as 0.
    mixed = generation_scores(["", "a perfect answer"], ["the reference answer", "a perfect answer"])
    for key in KEYS:
        assert mixed[key] == pytest.approx(50.0), key


def test_empty_reference_does_not_crash() -> None:
    scores = generation_scores(["some prediction"], [""])
    assert scores == {key: 0.0 for key in KEYS}


def test_metric_notes_describe_the_method() -> None:
    assert "\n" not in METRIC_NOTES
    for part in ("jieba", "ROUGE", "F1", "BLEU-4", "method3", "0-100"):
        assert part in METRIC_NOTES


def test_import_is_cheap() -> None:
    code = (
        "import sys, glmtune.inference.metrics\n"
        "heavy = [m for m in ('jieba', 'nltk', 'rouge_score', 'numpy', 'absl') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_jieba_banner_on_stderr() -> None:
    code = "from glmtune.inference.metrics import generation_scores\ngeneration_scores(['我爱北京'], ['天安门'])\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == ""
