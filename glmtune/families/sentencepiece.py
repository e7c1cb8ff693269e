"""SentencePiece tokenizer files as `tokenizers` pipelines, for any family whose record names these kinds.

- ``sentencepiece_unigram`` (ChatGLM-6B-style ``.model``): SentencePiece unigram with its precompiled charsmap. The
  spec's `replacements` (text -> user-defined piece) run first as `Replace` normalizers ahead of the charsmap, and a
  `Split` pre-tokenizer isolates the user-defined pieces as SentencePiece matches them. Ids are offset by the
  tokenizer_config.json key the spec names (placeholder pieces fill the offset). `tokenizers`' Precompiled charsmap
  normalizer differs from SentencePiece's on composed/decomposed marks, so NFKC runs first (`_charsmap_steps`); ids
  still differ only for combining-mark sequences that NFKC reorders or composes and SentencePiece keeps as they are
  (marks out of canonical order, a mark on a compatibility character, U+0338 right after a replaced run) and for
  text containing the last private-use characters of plane 16 (placeholders).
- ``sentencepiece_bpe`` (ChatGLM2/3-style ``.model``): SentencePiece BPE (identity normalizer, dummy prefix, byte
  fallback) rebuilt as a `tokenizers` BPE with merges ordered by piece score; special tokens follow the pieces.

`reference_encode` runs the original algorithm with the `sentencepiece` library (the ground truth of the tests),
and `train_tiny_bpe` trains a small model of the BPE kind for glmtune's builtin tiny checkpoints.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError
from glmtune.families.base import TokenizerSpec
from glmtune.families.sentencepiece_proto import (
    BPE,
    NORMAL,
    UNIGRAM,
    UNUSED,
    USER_DEFINED,
    SpModel,
    piece_entries,
    read_sp_model,
)

# Pieces SentencePiece never produces from text (control, unknown, unused, byte) get this unigram score so the
# `tokenizers` lattice never prefers them either (SentencePiece gives them score 0, the best score).
_NEVER_SCORE = -1e9
# Private-use characters (plane 16) that stand in for characters NFKC must not touch (see `_charsmap_steps`).
_PLACEHOLDER_BASE = 0x10FFFD


@lru_cache(maxsize=8)
def _processor(path: str) -> Any:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=path)


def apply_replacements(text: str, spec: TokenizerSpec) -> str:
    for old, new in spec.replacements:
        text = text.replace(old, new)
    return text


def reference_encode(path: Path, spec: TokenizerSpec, text: str, id_offset: int = 0) -> list[int]:
    """``SentencePieceProcessor.encode`` of the text after the spec's replacements, ids shifted by `id_offset`."""
    return [i + id_offset for i in _processor(str(path)).encode(apply_replacements(text, spec))]


# --------------------------------------------------------------------------------------------------------------------
# sentencepiece_bpe


def _bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two normal pieces, ranked by the merged piece's score (SentencePiece
    merges the adjacent pair whose union scores highest)."""
    index = {piece: i for i, (piece, _, kind) in enumerate(pieces) if kind == NORMAL}
    merges: list[tuple[float, int, int, int, str, str]] = []
    for piece, i in index.items():
        score = pieces[i][1]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                merges.append((-score, i, index[left], index[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def build_bpe(path: Path, spec: TokenizerSpec, tokenizer_config: dict[str, Any]) -> tuple[Any, int]:
    """(tokenizers pipeline, id of the first special token) of a SentencePiece BPE model."""
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE as BpeModel

    model = read_sp_model(path)
    if model.model_type != BPE or not model.add_dummy_prefix or model.remove_extra_whitespaces:
        raise UsageError(f"{path}: expected a SentencePiece BPE model without whitespace removal")
    vocab = {piece: i for i, (piece, _, _) in enumerate(model.pieces)}
    bpe = BpeModel(
        vocab=vocab,
        merges=_bpe_merges(model.pieces),
        unk_token=model.pieces[model.unk_id][0],
        fuse_unk=True,
        byte_fallback=model.byte_fallback,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tok, len(model.pieces)


def train_tiny_bpe(lines: list[str], pieces: int, vocab_size: int = 1000) -> bytes:
    """A SentencePiece BPE model trained like ChatGLM2/3's (byte fallback, dummy prefix, identity normalization,
    whitespace kept), padded with unused pieces to `pieces` so special tokens appended after it get their ids."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    data = model.getvalue()
    count = trained_pieces(data)
    return data + piece_entries([f"<unused_{i}>" for i in range(count, pieces)], UNUSED)


def trained_pieces(model: bytes) -> int:
    """Pieces before the unused padding (all of them in a freshly trained model)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    return next((i for i in range(len(processor)) if processor.is_unused(i)), len(processor))


# --------------------------------------------------------------------------------------------------------------------
# sentencepiece_unigram


def build_unigram(path: Path, spec: TokenizerSpec, id_offset: int) -> Any:
    """A SentencePiece unigram model, after the spec's replacements, ids shifted by `id_offset` placeholders. Its
    special tokens are control pieces of the model, so they already sit at their ids."""
    from tokenizers import Tokenizer, normalizers
    from tokenizers.models import Unigram

    model = read_sp_model(path)
    if model.model_type != UNIGRAM:
        raise UsageError(f"{path}: expected a SentencePiece unigram model")
    vocab = [(spec.id_offset_piece.format(i), _NEVER_SCORE) for i in range(id_offset)]
    vocab += [(p, s if kind in (NORMAL, USER_DEFINED) else _NEVER_SCORE) for p, s, kind in model.pieces]
    tok = Tokenizer(Unigram(vocab, unk_id=model.unk_id + id_offset, byte_fallback=model.byte_fallback))
    steps: list[Any] = [normalizers.Replace(old, new) for old, new in spec.replacements]
    tok.normalizer = normalizers.Sequence(steps + _whitespace_steps(model))
    user_defined = [piece for piece, _, kind in model.pieces if kind == USER_DEFINED]
    if user_defined:
        tok.pre_tokenizer = _isolate(user_defined)
    tok.decoder = _unigram_decoder(spec)
    return tok


def _whitespace_steps(model: SpModel) -> list[Any]:
    from tokenizers import Regex, normalizers

    steps: list[Any] = _charsmap_steps(model.precompiled_charsmap) if model.precompiled_charsmap else []
    if model.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if model.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if model.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    return steps


def _isolate(user_defined: list[str]) -> Any:
    """SentencePiece matches user-defined pieces whole wherever they occur (score 0, the best): isolate them so the
    lattice sees each as its own segment. (Added tokens would not do: `tokenizers` normalizes an added token's
    content too, and the dummy-prefix step would turn "<n>" into "▁<n>".)"""
    from tokenizers import Regex, pre_tokenizers

    alternatives = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
    return pre_tokenizers.Split(Regex(alternatives), behavior="isolated", invert=False)


def _unigram_decoder(spec: TokenizerSpec) -> Any:
    from tokenizers import decoders

    steps: list[Any] = [
        decoders.Replace("▁", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ]
    steps += [decoders.Replace(new, old) for old, new in reversed(spec.replacements)]
    return decoders.Sequence(steps)


def _charsmap_steps(charsmap: bytes) -> list[Any]:
    """Normalizers equal to SentencePiece's precompiled charsmap on text, as far as `tokenizers` allows.

    `tokenizers`' `Precompiled` looks graphemes up whole and keeps the SHORTEST trie match, where SentencePiece keeps
    the LONGEST match at each position. Alone it drops or mis-composes marks: half-width kana with (semi-)voiced marks
    ("ﾊﾟ" -> "ハ" instead of "パ"), text in NFD (Vietnamese "ệ" as e + U+0323 + U+0302 loses its circumflex), a combining
    mark after a space-like character. Running NFKC first hands it composed text, on which every multi-character key
    of the nmt_nfkc map gives SentencePiece's result; space-like characters are mapped to " " before NFKC; the few
    characters the charsmap deliberately leaves alone but NFKC would change (U+FF5E FULLWIDTH TILDE, ...) are hidden
    from NFKC behind private-use placeholders.
    """
    from tokenizers import Regex, normalizers

    precompiled = normalizers.Precompiled(charsmap)
    nfkc = normalizers.NFKC()
    space_like, exceptions = _space_like(precompiled), _nfkc_exceptions(precompiled, nfkc)
    steps: list[Any] = []
    if space_like:
        steps.append(
            normalizers.Replace(Regex("[" + "".join(f"\\x{{{ord(c):X}}}" for c in space_like) + "]"), " ")
        )
    placeholders = [chr(_PLACEHOLDER_BASE - i) for i in range(len(exceptions))]
    steps += [normalizers.Replace(c, p) for c, p in zip(exceptions, placeholders, strict=True)]
    steps.append(nfkc)
    steps += [normalizers.Replace(p, c) for c, p in zip(exceptions, placeholders, strict=True)]
    steps.append(precompiled)
    return steps


def _space_like(precompiled: Any) -> list[str]:
    """Characters other than " " that the charsmap turns into a space."""
    import unicodedata

    return [
        chr(c)
        for c in range(0x10000)
        if (unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp", "Cc", "Cf") or chr(c) in "\u2581\ufffd")
        and not 0xD800 <= c < 0xE000
        and chr(c) != " "
        and precompiled.normalize_str(chr(c)) == " "
    ]


def _nfkc_exceptions(precompiled: Any, nfkc: Any) -> list[str]:
    """Characters NFKC changes where the charsmap gives another result than after NFKC: alone, and after a letter
    (U+0344 decomposes into marks that NFKC composes with the letter)."""
    import unicodedata

    changed_by_nfkc = (
        chr(c)
        for c in range(0x40000)
        if not 0xD800 <= c < 0xE000 and unicodedata.normalize("NFKC", chr(c)) != chr(c)
    )
    return [
        c
        for c in changed_by_nfkc
        if any(
            precompiled.normalize_str(nfkc.normalize_str(s)) != precompiled.normalize_str(s)
            for s in (c, "a" + c)
        )
    ]
