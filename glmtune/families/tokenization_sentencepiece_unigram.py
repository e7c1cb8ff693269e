"""A transformers tokenizer that encodes with the `sentencepiece` library itself: ids equal to the original model's.

For SentencePiece unigram models whose original tokenizer rewrites text before SentencePiece (`replacements`: text
-> user-defined piece, in order, e.g. a newline to a piece of its own) and shifts every id by `id_offset`
(placeholder pieces named `offset_piece` fill the ids below it). `tokenizers`' Unigram cannot stand in for it: it
sums path scores in float64 and breaks exact ties by position, where SentencePiece compares float32 sums, so on
repeated substrings the same pieces come out in another order. Special tokens are pieces of the model, registered
at their ids by whoever builds the tokenizer (``added_tokens_decoder``), so text is split around them unless
``split_special_tokens=True``. Decoding is SentencePiece's per run of text ids, with the replacements undone; special
tokens show as their names (unless skipped), and a text run after one keeps its leading space.

`glmtune export` and `glmtune convert` save this file beside the tokenizer (auto_map ``AutoTokenizer``), so a fresh
process loads the folder with ``trust_remote_code=True`` and without glmtune; it imports nothing from glmtune.
"""

from __future__ import annotations

import os
from typing import Any

import sentencepiece
from transformers import PreTrainedTokenizer

SPACE = "\u2581"  # SentencePiece's whitespace symbol


class SentencePieceUnigramTokenizer(PreTrainedTokenizer):
    """`PreTrainedTokenizer` over ``sentencepiece.SentencePieceProcessor`` (see the module docstring)."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str,
        replacements: list[list[str]] | tuple[tuple[str, str], ...] = (),
        id_offset: int = 0,
        offset_piece: str = "<offset_{}>",
        **kwargs: Any,
    ) -> None:
        self.vocab_file = vocab_file
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(vocab_file))
        self.replacements = [(str(old), str(new)) for old, new in replacements]
        self.id_offset = int(id_offset)
        self.offset_piece = offset_piece
        self._offset_ids = {offset_piece.format(i): i for i in range(self.id_offset)}
        self._sentinel = _sentinel(self.sp)
        self._pieces: dict[str, int] | None = None
        super().__init__(
            replacements=self.replacements, id_offset=self.id_offset, offset_piece=offset_piece, **kwargs
        )
        self._update_trie()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["sp"] = self.sp.serialized_model_proto()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=state["sp"])

    @property
    def vocab_size(self) -> int:
        return self.id_offset + self.sp.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        if self._pieces is None:  # 130k lookups: built once
            self._pieces = dict(self._offset_ids)
            self._pieces.update(
                {self.sp.id_to_piece(i): i + self.id_offset for i in range(self.sp.get_piece_size())}
            )
        return {**self._pieces, **self._added_tokens_encoder}

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        for old, new in self.replacements:
            text = text.replace(old, new)
        return self.sp.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        index = self.sp.piece_to_id(token)
        if index == self.sp.unk_id() and token in self._offset_ids:
            return self._offset_ids[token]
        return index + self.id_offset

    def _convert_id_to_token(self, index: int) -> str:
        if index < self.id_offset:
            return self.offset_piece.format(index)
        return self.sp.id_to_piece(index - self.id_offset)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decode(self.convert_tokens_to_ids(tokens))

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> str:
        """Runs of text ids through SentencePiece's decode, special tokens as their names; placeholder ids below the
        offset decode to nothing, as the original drops them."""
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        skipped = set(self.all_special_ids) if skip_special_tokens else set()
        parts: list[str] = []
        run: list[int] = []
        for index in [*ids, None]:
            if index is not None and index not in self._added_tokens_decoder:
                if index >= self.id_offset:
                    run.append(index - self.id_offset)
                continue
            if text := self._decode_text(run, after_text=bool(parts)):
                parts.append(text)
            run = []
            if index is not None and index not in skipped:
                parts.append(self._added_tokens_decoder[index].content)
        text = "".join(parts)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def _decode_text(self, ids: list[int], after_text: bool) -> str:
        """SentencePiece drops the leading space of the first piece it decodes (its dummy prefix): after other text
        that space is real, so a sentinel piece goes first and is cut off again."""
        if not ids:
            return ""
        if after_text:
            sentinel_id, surface = self._sentinel
            text = self.sp.decode([sentinel_id, *ids])[len(surface) :]
        else:
            text = self.sp.decode(ids)
        for old, new in reversed(self.replacements):
            text = text.replace(new, old)
        return text

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        path = os.path.join(save_directory, name)
        with open(path, "wb") as file:
            file.write(self.sp.serialized_model_proto())
        return (path,)


def _sentinel(sp: Any) -> tuple[int, str]:
    """A piece whose decoded text is itself and starts with no space: what `_decode_text` puts in front."""
    for index in range(sp.get_piece_size()):
        piece = sp.id_to_piece(index)
        special = sp.is_control(index) or sp.is_unknown(index) or sp.is_unused(index) or sp.is_byte(index)
        if not special and piece and SPACE not in piece and sp.decode([index]) == piece:
            return index, piece
    raise ValueError("the SentencePiece model has no piece without a leading space")


SentencePieceUnigramTokenizer.register_for_auto_class("AutoTokenizer")
