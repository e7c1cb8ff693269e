"""Original-layout tokenizer files loaded without remote code, from a family's `TokenizerSpec`.

The GLM checkpoints ship `tokenization_chatglm.py` (remote code) that breaks on transformers 5. This module reads the
original tokenizer FILES with the kind the spec names (`glmtune.families.sentencepiece`, `.tiktoken_bpe`): a
`tokenizers` pipeline in `transformers.PreTrainedTokenizerFast` for the BPE kinds, the `sentencepiece` library
itself for the unigram kind; either way ids equal the original tokenizer's ids for text, with every special token
at its original id. No prefix tokens (``[gMASK]``, ``sop``) are added by ``encode``:
callers add them. `reference_encode` runs the original algorithm with the raw libraries (sentencepiece / tiktoken)
and is the ground truth the tests compare against.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from glmtune.errors import UsageError
from glmtune.families import sentencepiece, tiktoken_bpe
from glmtune.families.base import TokenizerSpec, read_json

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

KINDS = ("sentencepiece_unigram", "sentencepiece_bpe", "tiktoken_bpe")


def vocab_path(folder: Path, spec: TokenizerSpec) -> Path:
    if spec.kind not in KINDS:
        raise UsageError(f"unknown tokenizer kind {spec.kind!r}: expected one of {', '.join(KINDS)}")
    path = Path(folder) / spec.vocab_file
    if not path.is_file():
        raise UsageError(
            f"{path}: missing tokenizer file {spec.vocab_file!r}; copy it from the original checkpoint into {folder}"
        )
    return path


def id_offset(folder: Path, spec: TokenizerSpec) -> int:
    if not spec.id_offset_key:
        return 0
    config = read_json(Path(folder) / "tokenizer_config.json", required=False)
    return int(config.get(spec.id_offset_key, spec.id_offset_default))


def reference_encode(folder: Path, spec: TokenizerSpec, text: str) -> list[int]:
    """Ids of `text` under the original tokenizer's algorithm, computed with sentencepiece / tiktoken directly
    (special-token strings in text are plain text, as the original ``encode`` does). No prefix tokens."""
    path = vocab_path(folder, spec)
    if spec.kind == "tiktoken_bpe":
        return tiktoken_bpe.reference_encode(path, spec, text)
    return sentencepiece.reference_encode(path, spec, text, id_offset(folder, spec))


def _model_max_length(folder: Path) -> int | None:
    value = read_json(folder / "tokenizer_config.json", required=False).get("model_max_length")
    if isinstance(value, int) and 0 < value < 10**12:
        return value
    config = read_json(folder / "config.json", required=False)
    for key in ("seq_length", "max_sequence_length", "max_position_embeddings"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return int(config[key])
    return None


def _with_specials(folder: Path, spec: TokenizerSpec) -> Any:
    """The kind's `tokenizers` pipeline with the special tokens registered at their original ids (each one
    checked)."""
    from tokenizers import AddedToken

    path = vocab_path(folder, spec)
    tokenizer_config = read_json(folder / "tokenizer_config.json", required=False)
    if spec.kind == "sentencepiece_bpe":
        tok, first_id = sentencepiece.build_bpe(path, spec, tokenizer_config)
        names = list(spec.special_tokens)
    else:
        tok, first_id = tiktoken_bpe.build(path, spec, tokenizer_config)
        names = tiktoken_bpe.special_tokens(
            spec, tokenizer_config, first_id, folder / "tokenizer_config.json"
        )
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, single_word=t in spec.single_word) for t in names]
    )
    for offset, token in enumerate(names):
        if tok.token_to_id(token) != first_id + offset:
            raise UsageError(
                f"{path}: special token {token!r} got id {tok.token_to_id(token)}, expected {first_id + offset}"
            )
    return tok, names


def load_original_tokenizer(folder: Path, spec: TokenizerSpec) -> PreTrainedTokenizerBase:
    """A transformers tokenizer equivalent to the original tokenizer files in `folder` (no remote code).

    Special tokens are registered at their original ids; eos/pad/unk/bos/mask as the spec says; ``encode`` adds no
    prefix tokens. Special-token strings in text map to their ids by default (what a chat template needs); encode
    with ``split_special_tokens=True`` to treat them as plain text, as the original ``encode`` does with user
    content. BPE kinds give a `PreTrainedTokenizerFast` that reloads with plain ``AutoTokenizer.from_pretrained``;
    the unigram kind gives `SentencePieceUnigramTokenizer`, whose saved folder carries its module file (auto_map).
    Raises `UsageError` naming a missing or unreadable file.
    """
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    named = {
        "eos_token": spec.eos_token,
        "pad_token": spec.pad_token,
        "unk_token": spec.unk_token,
        "bos_token": spec.bos_token,
        "mask_token": spec.mask_token,
    }
    kwargs: dict[str, Any] = {
        key: value for key, value in named.items() if value is not None or key != "mask_token"
    }
    max_length = _model_max_length(folder)
    if max_length is not None:
        kwargs["model_max_length"] = max_length
    kwargs |= {"clean_up_tokenization_spaces": False, "padding_side": "left"}
    if spec.kind == "sentencepiece_unigram":
        path = vocab_path(folder, spec)
        extra = [t for t in spec.special_tokens if t not in named.values()]
        return sentencepiece.load_unigram(
            path, spec, id_offset(folder, spec), extra_special_tokens=extra, **kwargs
        )
    tok, names = _with_specials(folder, spec)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, extra_special_tokens=[t for t in names if t not in named.values()], **kwargs
    )
