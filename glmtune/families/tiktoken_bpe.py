"""tiktoken rank files (GLM-4-style ``tokenizer.model``) as `tokenizers` pipelines, for any family naming this kind.

A byte-level BPE with the spec's split pattern, merges derived from the ranks and ``ignore_merges`` (tiktoken returns
a whole pre-token that is in the vocabulary as is); special tokens follow the ranks, in the order the folder's
tokenizer_config.json added_tokens_decoder gives, else the spec's. `reference_encode` runs tiktoken itself (the
ground truth of the tests); `train_tiny` trains a small tokenizer of the same shape for builtin tiny models.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError
from glmtune.families.base import TokenizerSpec


def load_ranks(path: Path) -> dict[bytes, int]:
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
def _encoding(path: str, pattern: str) -> Any:
    import tiktoken

    return tiktoken.Encoding(
        name=f"tiktoken:{path}", pat_str=pattern, mergeable_ranks=load_ranks(Path(path)), special_tokens={}
    )


def reference_encode(path: Path, spec: TokenizerSpec, text: str) -> list[int]:
    """``tiktoken.Encoding(...).encode(text, disallowed_special=())``: special-token strings stay text."""
    return list(_encoding(str(path), spec.split_pattern).encode(text, disallowed_special=()))


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


def _byte_level(pattern: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def build(path: Path, spec: TokenizerSpec, tokenizer_config: dict[str, Any]) -> tuple[Any, int]:
    """(tokenizers pipeline, id of the first special token) of a tiktoken rank file."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE

    ranks = load_ranks(path)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UsageError(f"{path}: tiktoken ranks are not 0..N-1 without gaps")
    translation = _bytes_to_unicode()
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
    tok.pre_tokenizer = _byte_level(spec.split_pattern)
    tok.decoder = decoders.ByteLevel()
    return tok, len(ranks)


def special_tokens(
    spec: TokenizerSpec, tokenizer_config: dict[str, Any], first_id: int, where: Path
) -> list[str]:
    """The special tokens in id order: tokenizer_config.json's added_tokens_decoder, else the spec's list."""
    decoder = tokenizer_config.get("added_tokens_decoder") or {}
    if not decoder:
        return list(spec.special_tokens)
    try:
        entries = sorted((int(i), str(entry["content"])) for i, entry in decoder.items())
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{where}: added_tokens_decoder entries need an integer id and a 'content'") from exc
    if [i for i, _ in entries] != list(range(first_id, first_id + len(entries))):
        raise UsageError(f"{where}: added_tokens_decoder ids must follow the {first_id} ranks without gaps")
    return [content for _, content in entries]


def train_tiny(pattern: str, specials: tuple[str, ...], lines: list[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE `tokenizers` pipeline splitting text by `pattern`, with `specials` first, trained on `lines`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = _byte_level(pattern)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(lines, trainer)
    return core
