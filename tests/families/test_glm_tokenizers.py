"""glmtune.families.original_tokenizer against the original GLM tokenizer files (../shared/assets/glm-models).

Ground truth is `reference_encode`: the original tokenizers' algorithms run with sentencepiece / tiktoken directly.
Tests that need the original files skip when they are absent (a user's clone has no ../shared).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import shutil
import unicodedata
from pathlib import Path

import pytest

from glmtune.errors import UsageError
from glmtune.families import REGISTRY, TokenizerSpec, get_family
from glmtune.families import original_tokenizer as original
from glmtune.families.sentencepiece import apply_replacements

# The families with an original layout, by name, and their tokenizer specs.
SPECS: dict[str, TokenizerSpec] = {
    name: family.original.tokenizer for name, family in REGISTRY.items() if family.original is not None
}
FAMILIES = ("chatglm", "chatglm2", "chatglm3", "glm4")
VOCAB_FILES = {name: SPECS[name].vocab_file for name in FAMILIES}
GLM4_PATTERN = SPECS["glm4"].split_pattern


def load_original_tokenizer(folder: Path, family: str):
    return original.load_original_tokenizer(folder, get_family(family).original.tokenizer)


def reference_encode(folder: Path, family: str, text: str) -> list[int]:
    return original.reference_encode(folder, get_family(family).original.tokenizer, text)


def chatglm_preprocess(text: str) -> str:
    return apply_replacements(text, SPECS["chatglm"])


os.environ.setdefault("HF_HUB_OFFLINE", "1")

ASSETS = Path(
    os.environ.get("GLMTUNE_SHARED_ASSETS")
    or Path(__file__).resolve().parents[3] / "shared/assets/glm-models"
)
FOLDERS = {
    "chatglm": "chatglm-6b",
    "chatglm2": "chatglm2-6b",
    "chatglm3": "chatglm3-6b",
    "glm4": "glm-4-9b-chat",
}

# Special-token ids as the README states them (and the models' tokenization_chatglm.py defines them).
README_SPECIAL_IDS = {
    "chatglm": {"[MASK]": 130000, "[gMASK]": 130001, "[sMASK]": 130002, "<sop>": 130004, "<eop>": 130005},
    "chatglm2": {"[MASK]": 64789, "[gMASK]": 64790, "[sMASK]": 64791, "sop": 64792, "eop": 64793},
    "chatglm3": {
        "[MASK]": 64789, "[gMASK]": 64790, "[sMASK]": 64791, "sop": 64792, "eop": 64793,
        "<|system|>": 64794, "<|user|>": 64795, "<|assistant|>": 64796, "<|observation|>": 64797,
    },
    "glm4": {
        token: 151329 + i
        for i, token in enumerate(
            ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
             "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
             "<|end_of_video|>"]
        )
    },
}  # fmt: skip
# (eos, pad, unk) token ids of the original tokenizers.
EOS_PAD_UNK = {
    "chatglm": (130005, 3, 0),
    "chatglm2": (2, 0, 0),
    "chatglm3": (2, 0, 0),
    "glm4": (151329, 151329, None),
}
MODEL_MAX_LENGTH = {"chatglm": 2048, "chatglm2": 32768, "chatglm3": 8192, "glm4": 128000}


def folder_of(family: str) -> Path:
    folder = ASSETS / FOLDERS[family]
    if not (folder / VOCAB_FILES[family]).is_file():
        pytest.skip(
            f"{folder / VOCAB_FILES[family]} not found: the original GLM tokenizer files are expected in "
            f"../shared/assets/glm-models next to the repository (or set GLMTUNE_SHARED_ASSETS)"
        )
    return folder


_LOADED: dict[str, object] = {}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    folder_of(request.param)
    return request.param


@pytest.fixture(scope="module")
def tok(family):
    if family not in _LOADED:
        _LOADED[family] = load_original_tokenizer(folder_of(family), family)
    return _LOADED[family]


# --------------------------------------------------------------------------------------------------------------------
# Test strings


FRAGMENTS = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.", "你好，世界！", "今天天气很好，我们去公园散步吧。",
    "机器学习（Machine Learning）是人工智能的一个分支。", "请用Python写一个quick sort，谢谢～", "好的～～",
    "def f(x):\n    return x * 2\n", "class A:\n    def __init__(self):\n        self.x = [1, 2, 3]\n",
    "if a:\n\t\tpass\n", "for (int i = 0; i < n; ++i) {\n        sum += a[i];\n}", "emoji 😀👍🏽🇨🇳 ok",
    "👨‍👩‍👧‍👦 family", "❤️ ☺️ 1️⃣ ™️", "１２３ＡＢＣ！？（）【】「」", "ｶﾀｶﾅ ﾃﾞｰﾀ ﾊﾟﾋﾟ", "12345678901234567890",
    "3.14159e-10", "$100.00 + ¥200 = €3", "a\r\nb\r\n", "line1\nline2\n\n\nline5", "\t\ttabs\t", "trailing   ",
    "   leading", "Aesop's fables, people, isopropyl, geopolitics", "don't I'll we've they're", "UPPER lower MiXeD",
    "ñ é ü ß ø å Ω ∑ √ ∞", "日本語のテキスト、カタカナ", "한국어 텍스트", "Русский текст", "العربية", "ﬁ ﬂ ㈱ ① ⅷ ㎞",
    "\u3000全角空格\u3000", "no\u00a0break", "zero\u200bwidth", "Tiếng Việt", unicodedata.normalize("NFD", "Tiếng Việt"),
    '<html><body class="x">hi</body></html>', '{"key": [1, 2, 3], "v": null}', "x = y ** 2 // 3 % 4",
    "C:\\path\\to\\file.txt", "https://example.com/a?b=c&d=e#f", "@user #tag", "...!!!???", "—– “quotes” «guillemets»",
    "<n> <|tab|> <|blank_4|> <0x41> ▁ ▁▁x <image_5>", "SELECT * FROM t WHERE id = 1;", "x² H₂O ½",
    "", " ", "  ", "\n", "\t", "\r", "\r\n", "a", "中", "a\u0301", "\u0301",
]  # fmt: skip
SPECIAL_STRINGS = [
    "<|user|>", "<|assistant|>", "<|system|>", "<|observation|>", "[gMASK]", "[MASK]", "[sMASK]", "sop", "eop",
    "<sop>", "<eop>", "<|endoftext|>", "<|begin_of_image|>", "</s>", "<s>", "<unk>", "<pad>",
]  # fmt: skip


def _whitespace(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return " " * rng.choice(
            [1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 63, 79, 80, 81, 82, 100, 159, 160, 161, 250]
        )
    if kind == 1:
        return "\t" * rng.randint(1, 4)
    if kind == 2:
        return "\n" * rng.randint(1, 5)
    if kind == 3:
        return "\r\n" * rng.randint(1, 3)
    if kind == 4:
        return "".join(rng.choice(" \t\n\r\u3000\u00a0") for _ in range(rng.randint(1, 8)))
    return " " * rng.randint(1, 90) + "\n" + " " * rng.randint(0, 12)


_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "的一是在不了有和人这中大为上个国我以要他",
    ",.;:!?()[]{}<>'\"`~@#$%^&*-_=+/\\|", "，。；：！？（）「」《》、", "ＡＢＣａｂｃ０１２", "😀😂🥲🤖🎉", "αβγδεζ", "가나다라",
]  # fmt: skip


def make_corpus(n: int, seed: int, specials: bool = False) -> list[str]:
    """The fragments, then `n` random combinations of fragments, whitespace runs and characters (fixed seed)."""
    rng = random.Random(seed)
    out = list(FRAGMENTS)
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 5)):
            r = rng.random()
            if r < 0.45:
                parts.append(rng.choice(FRAGMENTS))
            elif r < 0.7:
                parts.append(_whitespace(rng))
            elif r < 0.9 or not specials:
                pool = rng.choice(_POOLS)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 20))))
            else:
                parts.append(rng.choice(SPECIAL_STRINGS))
        out.append("".join(parts))
    return out


CORPUS = make_corpus(250, seed=20240601)
SPECIAL_CORPUS = [s for s in make_corpus(150, seed=7, specials=True) if any(t in s for t in SPECIAL_STRINGS)]


@functools.lru_cache(maxsize=8)
def _sp(path: str):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=path)


@functools.lru_cache(maxsize=2)
def _tiktoken(path: str):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    return tiktoken.Encoding(
        "glm4", pat_str=GLM4_PATTERN, mergeable_ranks=load_tiktoken_bpe(path), special_tokens={}
    )


def reference_decode(folder: Path, family: str, ids: list[int]) -> str:
    """The original tokenizers' decode of text ids."""
    if family == "glm4":
        return _tiktoken(str(folder / "tokenizer.model")).decode_bytes(ids).decode("utf-8", "replace")
    sp = _sp(str(folder / VOCAB_FILES[family]))
    if family != "chatglm":
        return sp.decode(ids)
    offset = json.loads((folder / "tokenizer_config.json").read_text()).get("num_image_tokens", 20000)
    text = sp.decode([i - offset for i in ids if i >= offset])
    text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
    for n in range(2, 81):
        text = text.replace(f"<|blank_{n}|>", " " * n)
    return text


# --------------------------------------------------------------------------------------------------------------------
# Ids


def test_ids_equal_original(family, tok):
    folder = folder_of(family)
    mismatches = []
    for text in CORPUS:
        expected = reference_encode(folder, family, text)
        got = tok.encode(text, add_special_tokens=False)
        if got != expected:
            mismatches.append((text, got, expected))
        # no prefix tokens are added automatically: the caller adds [gMASK] / sop
        assert tok.encode(text) == got
    assert not mismatches, f"{len(mismatches)} of {len(CORPUS)} differ, first: {mismatches[0]!r}"


def test_special_strings_in_text_stay_text_with_split_special_tokens(family, tok):
    folder = folder_of(family)
    special_ids = set(tok.all_special_ids)
    assert SPECIAL_CORPUS
    for text in SPECIAL_CORPUS:
        got = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
        assert got == reference_encode(folder, family, text), text
        assert not special_ids & set(got), text


def test_special_strings_in_text_map_to_special_ids_by_default(family, tok):
    ids = README_SPECIAL_IDS[family]
    if family == "chatglm3":
        # what the chat template renders ("[gMASK]sop<|user|>\n ..."); text after a role token gets its own dummy
        # prefix, like the original's encode of the message text
        expected = [ids["[gMASK]"], ids["sop"], ids["<|user|>"]] + reference_encode(
            folder_of(family), family, "\n hi"
        )
        assert tok.encode("[gMASK]sop<|user|>\n hi", add_special_tokens=False) == expected
    elif family == "glm4":
        expected = [ids["[gMASK]"], ids["<sop>"], ids["<|user|>"]] + reference_encode(
            folder_of(family), family, "\nhi"
        )
        assert tok.encode("[gMASK]<sop><|user|>\nhi", add_special_tokens=False) == expected
    for token, token_id in ids.items():
        assert tok.encode(token, add_special_tokens=False) == [token_id]
        assert token_id not in reference_encode(folder_of(family), family, token)


@pytest.mark.parametrize("family_name", ["chatglm2", "chatglm3"])
def test_bare_sop_eop_only_match_whole_words(family_name):
    folder = folder_of(family_name)
    tok = _LOADED.get(family_name) or load_original_tokenizer(folder, family_name)
    _LOADED[family_name] = tok
    for text in ["Aesop people", "isopropyl geopolitics", "sopping eopx"]:
        assert tok.encode(text, add_special_tokens=False) == reference_encode(folder, family_name, text)
    assert tok.encode("[gMASK]sop", add_special_tokens=False) == [64790, 64792]


# --------------------------------------------------------------------------------------------------------------------
# Special tokens and facts from the README


def test_special_token_ids(family, tok):
    for token, token_id in README_SPECIAL_IDS[family].items():
        assert tok.convert_tokens_to_ids(token) == token_id, token
        assert tok.convert_ids_to_tokens(token_id) == token
        assert token in tok.all_special_tokens, token
    eos, pad, unk = EOS_PAD_UNK[family]
    assert (tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (eos, pad, unk)
    assert tok.model_max_length == MODEL_MAX_LENGTH[family]
    config = json.loads((folder_of(family) / "config.json").read_text())
    assert config["pad_token_id"] == pad
    assert eos in (
        config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]
    )


def test_readme_facts_against_the_files(family):
    folder = folder_of(family)
    if family == "glm4":
        lines = (folder / "tokenizer.model").read_text().splitlines()
        assert len(lines) == 151329
        config = json.loads((folder / "tokenizer_config.json").read_text())
        decoder = {entry["content"]: int(i) for i, entry in config["added_tokens_decoder"].items()}
        assert decoder == README_SPECIAL_IDS["glm4"]
        readme = ASSETS / "README.md"
        if readme.is_file():
            match = re.search(r"`(\(\?i:'s[^`]*)`", readme.read_text())
            assert match and match.group(1) == GLM4_PATTERN
        return
    sp = _sp(str(folder / VOCAB_FILES[family]))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if family == "chatglm":
        assert sp.get_piece_size() == 130344
        # The README says text ids are offset by 20,000 image tokens: that was the first release. The published
        # tokenizer_config.json sets num_image_tokens = 0, so the specials are ice_text.model's own control pieces.
        assert config["num_image_tokens"] == 0
        for token, token_id in README_SPECIAL_IDS["chatglm"].items():
            assert sp.piece_to_id(token) == token_id and sp.is_control(token_id)
        assert [sp.piece_to_id(p) for p in ["<n>", "<|tab|>", "<|blank_2|>", "<|blank_80|>"]] == [
            4,
            130008,
            130009,
            130087,
        ]
        return
    assert sp.get_piece_size() == 64789
    assert (sp.piece_to_id("</s>"), sp.unk_id()) == (2, 0)
    if family == "chatglm3":
        decoder = {entry["content"]: int(i) for i, entry in config["added_tokens_decoder"].items()}
        assert decoder.items() <= README_SPECIAL_IDS["chatglm3"].items()


def test_chatglm2_and_chatglm3_share_the_tokenizer_model():
    digests = {
        hashlib.sha256((folder_of(f) / "tokenizer.model").read_bytes()).hexdigest()
        for f in ("chatglm2", "chatglm3")
    }
    assert len(digests) == 1


# --------------------------------------------------------------------------------------------------------------------
# Decode, save / reload


def test_decode_matches_original(family, tok):
    folder = folder_of(family)
    round_trips = 0
    for text in CORPUS:
        ids = reference_encode(folder, family, text)
        original = reference_decode(folder, family, ids)
        assert tok.decode(ids) == original, text
        round_trips += original == text
    assert round_trips > len(CORPUS) // 4


def test_save_and_reload_with_autotokenizer(family, tok, tmp_path_factory):
    """The BPE kinds reload with plain AutoTokenizer; the unigram kind (a Python class that encodes with
    sentencepiece) carries its module file and auto_map, so it reloads with trust_remote_code=True."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp(f"saved-{family}")
    tok.save_pretrained(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    if tok.is_fast:
        assert "auto_map" not in config
        reloaded = AutoTokenizer.from_pretrained(out)
        assert reloaded.is_fast
    else:
        module = config["auto_map"]["AutoTokenizer"][0].split(".")[0]
        assert (out / f"{module}.py").is_file()
        reloaded = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
        assert type(reloaded).__name__ == type(tok).__name__
    texts = CORPUS + SPECIAL_CORPUS
    for split in (False, True):
        got = reloaded(texts, add_special_tokens=False, split_special_tokens=split)["input_ids"]
        assert got == tok(texts, add_special_tokens=False, split_special_tokens=split)["input_ids"]
    for token, token_id in README_SPECIAL_IDS[family].items():
        assert reloaded.convert_tokens_to_ids(token) == token_id
    assert (reloaded.eos_token_id, reloaded.pad_token_id, reloaded.unk_token_id) == EOS_PAD_UNK[family]
    assert reloaded.model_max_length == tok.model_max_length
    assert reloaded.decode(tok.encode(CORPUS[2])) == tok.decode(tok.encode(CORPUS[2]))


# --------------------------------------------------------------------------------------------------------------------
# ChatGLM-6B v1 specifics


def test_chatglm_ids_equal_sentencepiece_per_character():
    """Every character NFKC changes, every space-like character and mark, and known hard cases (half-width kana
    with voiced marks, NFD text, marks out of canonical order), between two letters."""
    folder = folder_of("chatglm")
    tok = _LOADED.get("chatglm") or load_original_tokenizer(folder, "chatglm")
    _LOADED["chatglm"] = tok
    chars = [
        chr(c)
        for c in range(0x30000)
        if not 0xD800 <= c < 0xE000
        and (
            unicodedata.normalize("NFKC", chr(c)) != chr(c)
            or unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp", "Cc", "Cf", "Mn")
        )
    ]
    hard = ["ﾊﾟ", "ﾃﾞ", unicodedata.normalize("NFD", "ệ ữ 한"), "～", "\u00a0\u0322", "\u1680\u0301", "a\u0344"]
    hard += ["x\u035c\u0340 O\u032f\u0303", "\U0010fffd\U0010fffc"]
    texts = [f"a{s}b" for s in chars + hard]
    got = tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    bad = [t for t, ids in zip(texts, got, strict=True) if ids != reference_encode(folder, "chatglm", t)]
    assert not bad, [ascii(t) for t in bad[:20]]


def test_chatglm_image_token_offset(tmp_path):
    """Without num_image_tokens in tokenizer_config.json the original code offsets text ids by 20,000."""
    folder = folder_of("chatglm")
    try:
        (tmp_path / "ice_text.model").symlink_to(folder / "ice_text.model")
    except OSError:
        shutil.copyfile(folder / "ice_text.model", tmp_path / "ice_text.model")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    tok = load_original_tokenizer(tmp_path, "chatglm")
    assert tok.convert_tokens_to_ids(["[gMASK]", "<sop>", "<eop>", "<n>"]) == [150001, 150004, 150005, 20004]
    assert (tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (150005, 20003, 20000)
    for text in CORPUS[:120]:
        assert tok.encode(text, add_special_tokens=False) == reference_encode(tmp_path, "chatglm", text), text


def test_chatglm_preprocess():
    assert chatglm_preprocess("a\tb\nc") == "a<|tab|>b<n>c"
    assert chatglm_preprocess("a  b") == "a<|blank_2|>b"
    assert chatglm_preprocess(" " * 80) == "<|blank_80|>"
    assert chatglm_preprocess(" " * 81) == "<|blank_80|> "
    assert chatglm_preprocess(" " * 165) == "<|blank_80|><|blank_80|><|blank_5|>"


# --------------------------------------------------------------------------------------------------------------------
# Errors (no original files needed)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_missing_file_is_a_usage_error(tmp_path, family_name):
    with pytest.raises(UsageError, match=re.escape(VOCAB_FILES[family_name])):
        load_original_tokenizer(tmp_path, family_name)
    with pytest.raises(UsageError, match=re.escape(VOCAB_FILES[family_name])):
        reference_encode(tmp_path, family_name, "hi")


def test_unknown_kind_and_bad_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown tokenizer kind"):
        original.load_original_tokenizer(
            tmp_path, TokenizerSpec("wordpiece", "vocab.txt", (), eos_token="</s>")
        )
    (tmp_path / "tokenizer.model").write_bytes(b"\xff\xfe not a model")
    with pytest.raises(UsageError, match="tokenizer.model"):
        load_original_tokenizer(tmp_path, "chatglm3")
    with pytest.raises(UsageError, match="tokenizer.model"):
        load_original_tokenizer(tmp_path, "glm4")
