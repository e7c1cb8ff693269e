"""Load the original GLM-family tokenizer files without remote code.

The ChatGLM checkpoints ship `tokenization_chatglm.py` (remote code) that breaks on transformers 5. This module reads the
original tokenizer FILES directly and builds a `tokenizers` pipeline wrapped in `transformers.PreTrainedTokenizerFast`
whose ids equal the original tokenizer's ids for text, with every special token at its original id:

- ``chatglm`` (ChatGLM-6B v1, ``ice_text.model``): SentencePiece unigram with ``nmt_nfkc`` normalization. The original
  ``SPTokenizer`` replaces ``\\n`` -> ``<n>``, ``\\t`` -> ``<|tab|>`` and runs of 2-80 spaces -> ``<|blank_N|>`` before
  SentencePiece; here those are `Replace` normalizers ahead of the charsmap, and a `Split` pre-tokenizer isolates the
  user-defined pieces as SentencePiece does. Ids are offset by ``num_image_tokens`` from tokenizer_config.json (the
  published config says 0, so ``[gMASK]`` = piece 130001; the code's default, used when the key is absent, is 20000).
  `tokenizers`' Precompiled charsmap normalizer differs from SentencePiece's on composed/decomposed marks, so NFKC runs
  first (see `_sp_charsmap_steps`); ids still differ only for combining-mark sequences that NFKC reorders or composes
  and SentencePiece keeps as they are (marks out of canonical order, a mark on a compatibility character, U+0338 right
  after a newline/tab/space run) and for text containing the last private-use characters of plane 16 (placeholders).
- ``chatglm2`` / ``chatglm3`` (``tokenizer.model``): SentencePiece BPE (identity normalizer, dummy prefix, byte
  fallback) rebuilt as a `tokenizers` BPE with merges ordered by piece score; special tokens follow the 64,789 pieces.
- ``glm4`` (GLM-4-9B-chat, ``tokenizer.model`` = tiktoken rank file): byte-level BPE with the tiktoken split regex, merges
  derived from the ranks, ``ignore_merges`` (tiktoken returns a whole pre-token that is in the vocabulary as is).

No prefix tokens (``[gMASK]``, ``sop``) are added by ``encode``: callers add them. `reference_encode` runs the original
algorithm with the raw libraries (sentencepiece / tiktoken) and is the ground truth the tests compare against.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glmtune.errors import UsageError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FAMILIES = ("chatglm", "chatglm2", "chatglm3", "glm4")

VOCAB_FILES = {
    "chatglm": "ice_text.model",
    "chatglm2": "tokenizer.model",
    "chatglm3": "tokenizer.model",
    "glm4": "tokenizer.model",
}

# tiktoken split pattern of GLM-4 (tokenization_chatglm.py of THUDM/glm-4-9b-chat).
GLM4_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# Special tokens appended after the SentencePiece pieces by ChatGLM2/3's SPTokenizer, in id order.
CHATGLM2_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
CHATGLM3_SPECIALS = CHATGLM2_SPECIALS + ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
# Special tokens of GLM-4-9B-chat when tokenizer_config.json lacks added_tokens_decoder; ids follow the ranks.
GLM4_SPECIALS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
)  # fmt: skip
# ChatGLM-6B v1 SPTokenizer.special_tokens (control pieces of ice_text.model).
CHATGLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>")
CHATGLM_MAX_BLANK = 80
CHATGLM_DEFAULT_IMAGE_TOKENS = 20000

# Pieces SentencePiece never produces from text (control, unknown, unused, byte) get this unigram score so the
# `tokenizers` lattice never prefers them either (SentencePiece gives them score 0, the best score).
_NEVER_SCORE = -1e9

# sentencepiece_model.proto piece types
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


# --------------------------------------------------------------------------------------------------------------------
# Minimal reader of SentencePiece model files (protobuf wire format), so no `protobuf` package is needed.


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


@dataclass
class SpModel:
    """The parts of a SentencePiece ModelProto that matter for encoding."""

    pieces: list[tuple[str, float, int]] = field(default_factory=list)  # (piece, score, type)
    model_type: int = 1  # 1 unigram, 2 BPE
    byte_fallback: bool = False
    unk_id: int = 0
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _sp_piece(message: bytes) -> tuple[str, float, int]:
    """One `SentencePiece` message: (piece, score, type); inlined for the common one-byte keys (130k pieces)."""
    piece, score, kind = "", 0.0, _NORMAL
    i, end = 0, len(message)
    while i < end:
        key = message[i]
        if key == 0x0A:  # 1: piece (string)
            size, i = _varint(message, i + 1)
            piece, i = message[i : i + size].decode("utf-8"), i + size
        elif key == 0x15:  # 2: score (float)
            score, i = struct.unpack_from("<f", message, i + 1)[0], i + 5
        elif key == 0x18:  # 3: type (enum)
            kind, i = _varint(message, i + 1)
        else:  # unknown field: parse generically
            for number, value in _proto_fields(message):
                if number == 1 and isinstance(value, bytes):
                    piece = value.decode("utf-8")
                elif number == 2 and isinstance(value, bytes):
                    score = struct.unpack("<f", value)[0]
                elif number == 3 and isinstance(value, int):
                    kind = value
            break
    return piece, score, kind


def read_sp_model(path: Path) -> SpModel:
    """Parse a SentencePiece ``.model`` file (fields per sentencepiece_model.proto, defaults as proto2 declares)."""
    try:
        model = _parse_sp_model(Path(path).read_bytes())
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise UsageError(f"{path}: not a SentencePiece model file ({exc})") from exc
    if not model.pieces:
        raise UsageError(f"{path}: not a SentencePiece model file (no pieces)")
    return model


def _parse_sp_model(data: bytes) -> SpModel:
    model = SpModel()
    for number, value in _proto_fields(data):
        if number == 1 and isinstance(value, bytes):  # SentencePiece
            model.pieces.append(_sp_piece(value))
        elif number == 2 and isinstance(value, bytes):  # TrainerSpec
            for n, v in _proto_fields(value):
                if n == 3 and isinstance(v, int):
                    model.model_type = v
                elif n == 35 and isinstance(v, int):
                    model.byte_fallback = bool(v)
                elif n == 40 and isinstance(v, int):
                    model.unk_id = v
        elif number == 3 and isinstance(value, bytes):  # NormalizerSpec
            for n, v in _proto_fields(value):
                if n == 1 and isinstance(v, bytes):
                    model.normalizer_name = v.decode("utf-8")
                elif n == 2 and isinstance(v, bytes):
                    model.precompiled_charsmap = v
                elif n == 3 and isinstance(v, int):
                    model.add_dummy_prefix = bool(v)
                elif n == 4 and isinstance(v, int):
                    model.remove_extra_whitespaces = bool(v)
                elif n == 5 and isinstance(v, int):
                    model.escape_whitespaces = bool(v)
    return model


# --------------------------------------------------------------------------------------------------------------------
# Files and configs


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise UsageError(f"unknown tokenizer family {family!r}: expected one of {', '.join(FAMILIES)}")


def _vocab_path(folder: Path, family: str) -> Path:
    _check_family(family)
    folder = Path(folder)
    path = folder / VOCAB_FILES[family]
    if not path.is_file():
        raise UsageError(
            f"{path}: missing tokenizer file {VOCAB_FILES[family]!r} for family {family!r}; "
            f"copy it from the original checkpoint into {folder}"
        )
    return path


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


def _num_image_tokens(folder: Path) -> int:
    value = _read_json(Path(folder) / "tokenizer_config.json").get(
        "num_image_tokens", CHATGLM_DEFAULT_IMAGE_TOKENS
    )
    return int(value)


def _model_max_length(folder: Path) -> int | None:
    tok_config = _read_json(Path(folder) / "tokenizer_config.json")
    value = tok_config.get("model_max_length")
    if isinstance(value, int) and 0 < value < 10**12:
        return value
    config = _read_json(Path(folder) / "config.json")
    for key in ("seq_length", "max_sequence_length", "max_position_embeddings"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return int(config[key])
    return None


# --------------------------------------------------------------------------------------------------------------------
# Reference (original) algorithms


@lru_cache(maxsize=8)
def _sp_processor(path: str) -> Any:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=path)


def _load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError as exc:
                raise UsageError(f"{path}:{line_no}: not a tiktoken rank line (base64 token, rank)") from exc
    return ranks


@lru_cache(maxsize=4)
def _tiktoken_encoding(path: str) -> Any:
    import tiktoken

    return tiktoken.Encoding(
        name=f"glm4:{path}",
        pat_str=GLM4_PATTERN,
        mergeable_ranks=_load_tiktoken_ranks(Path(path)),
        special_tokens={},
    )


def chatglm_preprocess(text: str, max_blank: int = CHATGLM_MAX_BLANK) -> str:
    """ChatGLM-6B v1 `SPTokenizer._preprocess`: newline, tab and space runs become user-defined pieces."""
    text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
    for length in range(max_blank, 1, -1):
        text = text.replace(" " * length, f"<|blank_{length}|>")
    return text


def reference_encode(folder: Path, family: str, text: str) -> list[int]:
    """Ids of `text` under the original tokenizer's algorithm, computed with sentencepiece / tiktoken directly.

    chatglm2/3: ``SentencePieceProcessor.encode(text)`` (role and special tokens in text are plain text, as the original
    ``encode`` does). chatglm: ``SPTokenizer.encode`` (preprocessing, then ids offset by ``num_image_tokens``). glm4:
    ``tiktoken.Encoding(...).encode(text, disallowed_special=())``. No prefix tokens.
    """
    path = _vocab_path(folder, family)
    if family == "glm4":
        return list(_tiktoken_encoding(str(path)).encode(text, disallowed_special=()))
    processor = _sp_processor(str(path))
    if family == "chatglm":
        offset = _num_image_tokens(folder)
        return [i + offset for i in processor.encode(chatglm_preprocess(text))]
    return list(processor.encode(text))


# --------------------------------------------------------------------------------------------------------------------
# tokenizers pipelines


def _sp_bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Merges for a SentencePiece BPE model: every split of a normal piece into two normal pieces, ranked by the
    merged piece's score (SentencePiece merges the adjacent pair whose union scores highest)."""
    index = {piece: i for i, (piece, _, kind) in enumerate(pieces) if kind == _NORMAL}
    merges: list[tuple[float, int, int, int, str, str]] = []
    for piece, i in index.items():
        score = pieces[i][1]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                merges.append((-score, i, index[left], index[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def _build_sp_bpe(model: SpModel, path: Path) -> Any:
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    if model.model_type != 2 or not model.add_dummy_prefix or model.remove_extra_whitespaces:
        raise UsageError(
            f"{path}: expected a SentencePiece BPE model without whitespace removal (ChatGLM2/3)"
        )
    vocab = {piece: i for i, (piece, _, _) in enumerate(model.pieces)}
    unk = model.pieces[model.unk_id][0]
    tok = Tokenizer(
        BPE(vocab=vocab, merges=_sp_bpe_merges(model.pieces), unk_token=unk, fuse_unk=True,
            byte_fallback=model.byte_fallback)
    )  # fmt: skip
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tok


# Private-use characters (plane 16) that stand in for characters NFKC must not touch (see `_sp_charsmap_steps`).
_PLACEHOLDER_BASE = 0x10FFFD


def _sp_charsmap_steps(charsmap: bytes) -> list[Any]:
    """Normalizers equal to SentencePiece's precompiled charsmap on text, as far as `tokenizers` allows.

    `tokenizers`' `Precompiled` looks graphemes up whole and keeps the SHORTEST trie match, where SentencePiece keeps
    the LONGEST match at each position. Alone it drops or mis-composes marks: half-width kana with (semi-)voiced marks
    ("ﾊﾟ" -> "ハ" instead of "パ"), text in NFD (Vietnamese "ệ" as e + U+0323 + U+0302 loses its circumflex), a combining
    mark after a space-like character. Running NFKC first hands it composed text, on which every multi-character key
    of the nmt_nfkc map gives SentencePiece's result; space-like characters are mapped to " " before NFKC; the few
    characters the charsmap deliberately leaves alone but NFKC would change (U+FF5E FULLWIDTH TILDE, ...) are hidden
    from NFKC behind private-use placeholders.
    """
    import unicodedata

    from tokenizers import Regex, normalizers

    precompiled = normalizers.Precompiled(charsmap)
    nfkc = normalizers.NFKC()
    space_like = [
        chr(c)
        for c in range(0x10000)
        if (unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp", "Cc", "Cf") or chr(c) in "\u2581\ufffd")
        and not 0xD800 <= c < 0xE000
        and chr(c) != " "
        and precompiled.normalize_str(chr(c)) == " "
    ]
    changed_by_nfkc = (
        chr(c)
        for c in range(0x40000)
        if not 0xD800 <= c < 0xE000 and unicodedata.normalize("NFKC", chr(c)) != chr(c)
    )
    exceptions = [  # alone, and after a letter (U+0344 decomposes into marks that NFKC composes with the letter)
        c
        for c in changed_by_nfkc
        if any(
            precompiled.normalize_str(nfkc.normalize_str(s)) != precompiled.normalize_str(s)
            for s in (c, "a" + c)
        )
    ]
    steps: list[Any] = []
    if space_like:
        steps.append(normalizers.Replace(Regex("[" + "".join(_regex_char(c) for c in space_like) + "]"), " "))
    placeholders = [chr(_PLACEHOLDER_BASE - i) for i in range(len(exceptions))]
    steps += [normalizers.Replace(c, p) for c, p in zip(exceptions, placeholders, strict=True)]
    steps.append(nfkc)
    steps += [normalizers.Replace(p, c) for c, p in zip(exceptions, placeholders, strict=True)]
    steps.append(precompiled)
    return steps


def _regex_char(char: str) -> str:
    return f"\\x{{{ord(char):X}}}"


def _build_chatglm_unigram(model: SpModel, num_image_tokens: int, path: Path) -> Any:
    """ChatGLM-6B v1 (``SPTokenizer.encode``) as a `tokenizers` Unigram."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram

    if model.model_type != 1:
        raise UsageError(f"{path}: expected a SentencePiece unigram model (ChatGLM-6B ice_text.model)")
    vocab: list[tuple[str, float]] = [(f"<image_{i}>", _NEVER_SCORE) for i in range(num_image_tokens)]
    user_defined: list[str] = []
    for piece, score, kind in model.pieces:
        if kind == _USER_DEFINED:
            user_defined.append(piece)
        vocab.append((piece, score if kind in (_NORMAL, _USER_DEFINED) else _NEVER_SCORE))
    tok = Tokenizer(Unigram(vocab, unk_id=model.unk_id + num_image_tokens, byte_fallback=model.byte_fallback))

    steps: list[Any] = [normalizers.Replace("\n", "<n>"), normalizers.Replace("\t", "<|tab|>")]
    steps += [normalizers.Replace(" " * n, f"<|blank_{n}|>") for n in range(CHATGLM_MAX_BLANK, 1, -1)]
    if model.precompiled_charsmap:
        steps += _sp_charsmap_steps(model.precompiled_charsmap)
    if model.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if model.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if model.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    # SentencePiece matches user-defined pieces whole wherever they occur (score 0, the best): isolate them so the
    # lattice sees each as its own segment. (Added tokens would not do: `tokenizers` normalizes an added token's
    # content too, and the dummy-prefix step would turn "<n>" into "▁<n>".)
    if user_defined:
        alternatives = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(alternatives), behavior="isolated", invert=False)

    dec: list[Any] = [
        decoders.Replace("▁", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ]
    dec += [decoders.Replace("<n>", "\n"), decoders.Replace("<|tab|>", "\t")]
    dec += [decoders.Replace(f"<|blank_{n}|>", " " * n) for n in range(2, CHATGLM_MAX_BLANK + 1)]
    tok.decoder = decoders.Sequence(dec)
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _build_tiktoken_bpe(ranks: dict[bytes, int], path: Path) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    translation = {i: char for i, char in _bytes_to_unicode().items()}
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UsageError(f"{path}: tiktoken ranks are not 0..N-1 without gaps")
    names = {token: token.decode("latin-1").translate(translation) for token in ranks}
    merges: list[tuple[int, int, int, str, str]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], names[left], names[right]))
    merges.sort()
    model = BPE(
        vocab={names[t]: r for t, r in ranks.items()}, merges=[(a, b) for *_, a, b in merges], fuse_unk=False
    )
    model.ignore_merges = True  # tiktoken: a pre-token that is itself in the vocabulary is one token
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GLM4_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


# --------------------------------------------------------------------------------------------------------------------
# Public loader


def _add_specials_at(tok: Any, specials: list[Any], first_id: int) -> None:
    """Append special tokens after the model vocabulary and check each lands on its original id."""
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != first_id:
        raise UsageError(
            f"tokenizer vocabulary has {size} tokens; the special tokens must start at id {first_id}"
        )
    tok.add_special_tokens(specials)
    for offset, token in enumerate(specials):
        got = tok.token_to_id(token.content)
        if got != first_id + offset:
            raise UsageError(f"special token {token.content!r} got id {got}, expected {first_id + offset}")


def _glm4_specials(folder: Path, n_ranks: int) -> list[str]:
    """GLM-4 special tokens in id order: tokenizer_config.json's added_tokens_decoder, else the remote code's list."""
    config_path = Path(folder) / "tokenizer_config.json"
    decoder = _read_json(config_path).get("added_tokens_decoder") or {}
    if not decoder:
        return list(GLM4_SPECIALS)
    try:
        entries = sorted((int(i), str(entry["content"])) for i, entry in decoder.items())
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(
            f"{config_path}: added_tokens_decoder entries need an integer id and a 'content'"
        ) from exc
    if [i for i, _ in entries] != list(range(n_ranks, n_ranks + len(entries))):
        raise UsageError(
            f"{config_path}: added_tokens_decoder ids must follow the {n_ranks} ranks without gaps"
        )
    return [content for _, content in entries]


def load_original_tokenizer(folder: Path, family: str) -> PreTrainedTokenizerBase:
    """A `PreTrainedTokenizerFast` equivalent to the original GLM tokenizer in `folder` (no remote code).

    `family` is one of ``chatglm`` (ChatGLM-6B v1), ``chatglm2``, ``chatglm3``, ``glm4`` (GLM-4-9B-chat remote layout).
    Special tokens are registered as additional special tokens at their original ids; eos/pad/unk are set as the
    original sets them; ``encode`` adds no prefix tokens (``[gMASK]``, ``sop``): callers add them. Special-token strings
    in text map to their ids by default (what a chat template needs); encode with ``split_special_tokens=True`` to
    treat them as plain text, as the original ``encode`` does with user content. ChatGLM2/3's bare-word ``sop`` /
    ``eop`` only match as whole words, so "Aesop" stays text. The result saves with ``save_pretrained`` and reloads
    with plain ``AutoTokenizer.from_pretrained`` (no remote code). Raises `UsageError` naming a missing file.
    """
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    path = _vocab_path(folder, family)
    kwargs: dict[str, Any]
    if family == "glm4":
        ranks = _load_tiktoken_ranks(path)
        tok = _build_tiktoken_bpe(ranks, path)
        names = _glm4_specials(folder, len(ranks))
        _add_specials_at(tok, [AddedToken(t, special=True, normalized=False) for t in names], len(ranks))
        kwargs = {
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "bos_token": None,
        }
    elif family in ("chatglm2", "chatglm3"):
        model = read_sp_model(path)
        tok = _build_sp_bpe(model, path)
        names = list(CHATGLM3_SPECIALS if family == "chatglm3" else CHATGLM2_SPECIALS)
        added = [
            AddedToken(t, special=True, normalized=False, single_word=t in ("sop", "eop")) for t in names
        ]
        _add_specials_at(tok, added, len(model.pieces))
        unk = model.pieces[model.unk_id][0]
        kwargs = {"eos_token": "</s>", "pad_token": unk, "unk_token": unk, "bos_token": None}
    else:
        model = read_sp_model(path)
        tok = _build_chatglm_unigram(model, _num_image_tokens(folder), path)
        # The special tokens are control pieces of ice_text.model, already in the vocabulary at their ids.
        size = tok.get_vocab_size()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHATGLM_SPECIALS])
        missing = [t for t in CHATGLM_SPECIALS if tok.token_to_id(t) >= size]
        if missing:
            raise UsageError(
                f"{path}: no pieces for the special tokens {missing}; is this ChatGLM-6B's ice_text.model?"
            )
        names = [t for t in CHATGLM_SPECIALS if t not in ("[MASK]", "<sop>", "<eop>")]
        kwargs = {"bos_token": "<sop>", "eos_token": "<eop>", "mask_token": "[MASK]", "pad_token": "<pad>",
                  "unk_token": "<unk>"}  # fmt: skip
    max_length = _model_max_length(folder)
    if max_length is not None:
        kwargs["model_max_length"] = max_length
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        extra_special_tokens=names,
        clean_up_tokenization_spaces=False,
        padding_side="left",
        **kwargs,
    )
