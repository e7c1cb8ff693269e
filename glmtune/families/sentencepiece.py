"""SentencePiece tokenizer files as transformers tokenizers, for any family whose record names these kinds.

- ``sentencepiece_unigram`` (ChatGLM-6B-style ``.model``): SentencePiece unigram with its precompiled charsmap and the
  spec's `replacements` (text -> user-defined piece) applied first, ids offset by the tokenizer_config.json key the
  spec names. Encoded by the `sentencepiece` library itself (`SentencePieceUnigramTokenizer`, a slow tokenizer):
  `tokenizers`' Unigram breaks exact ties of path scores in another way than SentencePiece's float32 sums, so its
  ids differ on repeated substrings, and its charsmap normalizer differs on combining marks.
- ``sentencepiece_bpe`` (ChatGLM2/3-style ``.model``): SentencePiece BPE (identity normalizer, dummy prefix, byte
  fallback) rebuilt as a `tokenizers` BPE with merges ordered by piece score; special tokens follow the pieces.

`reference_encode` runs the original algorithm with the `sentencepiece` library (the ground truth of the tests);
`train_tiny_bpe` and `train_tiny_unigram` train small models of both kinds in-process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError
from glmtune.families.base import TokenizerSpec
from glmtune.families.sentencepiece_proto import BPE, NORMAL, UNUSED, piece_entries, read_sp_model


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


def load_unigram(path: Path, spec: TokenizerSpec, id_offset: int, **kwargs: Any) -> Any:
    """A SentencePiece unigram model as `SentencePieceUnigramTokenizer` (the `sentencepiece` library encodes): the
    spec's replacements first, ids shifted by `id_offset`, its special tokens (control pieces of the model) at
    their ids. `kwargs` go to the tokenizer (named special tokens, model_max_length ...)."""
    from transformers import AddedToken

    from glmtune.families.tokenization_sentencepiece_unigram import SentencePieceUnigramTokenizer

    try:
        model = _processor(str(path))
    except (RuntimeError, OSError) as exc:
        raise UsageError(f"{path}: not a SentencePiece model file ({str(exc).strip()[:120]})") from None
    named = [kwargs[key] for key in _NAMED if kwargs.get(key) is not None]
    specials = list(dict.fromkeys([*spec.special_tokens, *named]))
    if missing := [token for token in specials if model.id_to_piece(model.piece_to_id(token)) != token]:
        raise UsageError(f"{path}: special token {missing[0]!r} is not a piece of the model")
    decoder = {
        model.piece_to_id(t) + id_offset: AddedToken(t, special=True, normalized=False) for t in specials
    }
    return SentencePieceUnigramTokenizer(
        vocab_file=str(path),
        replacements=spec.replacements,
        id_offset=id_offset,
        offset_piece=spec.id_offset_piece,
        added_tokens_decoder=decoder,
        **kwargs,
    )


_NAMED = ("eos_token", "pad_token", "unk_token", "bos_token", "mask_token")


def train_tiny_unigram(lines: list[str], spec: TokenizerSpec, vocab_size: int = 1000) -> bytes:
    """A small SentencePiece unigram model shaped like the spec's original (NFKC charsmap, dummy prefix, byte
    fallback): the spec's special tokens as control pieces, the replacement pieces as user-defined ones."""
    import io

    import sentencepiece

    named = [spec.pad_token, spec.unk_token, spec.eos_token, spec.bos_token, spec.mask_token]
    control = [t for t in dict.fromkeys([*spec.special_tokens, *named]) if t and t != spec.unk_token]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=True,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_piece=spec.unk_token or "<unk>",
        control_symbols=control,
        user_defined_symbols=list(dict.fromkeys(new for _, new in spec.replacements)),
        minloglevel=2,
    )
    return model.getvalue()
