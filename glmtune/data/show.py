"""`glmtune render`: every record of a data file as its family renders it, one JSON object per record.

`{"text": …, "trained": […]}`: the rendered conversation with special tokens written as text, and the supervised
part as the list of its contiguous trained spans. The text is the family layout's own, so it needs no tokenizer;
with a tokenizer the record's `ids` and `mask` (from `render_conversation`, the one mask owner) come with it.
A conversation that ends with an assistant turn is followed by the token that ends that turn (trained), which the
template itself does not write; everything before it is the template's text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from glmtune.data.formats import Example, read_examples
from glmtune.data.render import Thinking, render_conversation, thinking_options
from glmtune.errors import UsageError
from glmtune.families import Family, Piece, detect_family, get_family


def render_target(
    source: str | None, data: Path | None, family: str | None, ids: bool
) -> tuple[str | None, Path]:
    """`render`'s arguments sorted out: (the model folder or None, the data file). With `--family` and one
    argument, that argument is the data; `--ids` needs a folder, whose tokenizer makes them."""
    if data is None and family is not None:
        source, data = None, Path(source) if source else None
    if data is None or (source is None and family is None):
        raise UsageError("glmtune render: give MODEL_DIR DATA, or --family NAME DATA")
    if ids and source is None:
        raise UsageError("glmtune render --ids: give MODEL_DIR, whose tokenizer makes the ids")
    return source, data


def render_family(folder: Path | None, family: str | None) -> Family:
    """The family named by `--family`, else the one the folder's files show."""
    return get_family(str(family)) if family or folder is None else detect_family(folder)


def render_lines(
    data: Path, family: Family, *, generation_prompt: bool, thinking: Thinking, tokenizer=None
) -> list[str]:
    """JSON lines for the records of `data` (any format glmtune reads), all rendered before any is printed, so a
    bad record leaves stdout empty."""
    lines = []
    for example in read_examples([str(data)], "DATA", "auto", {}, None):
        try:
            record = render_record(example, family, generation_prompt, thinking, tokenizer)
        except UsageError as exc:
            raise UsageError(f"{example.origin}: {exc}") from None
        lines.append(json.dumps(record, ensure_ascii=False))
    return lines


def render_record(
    example: Example, family: Family, generation_prompt: bool, thinking: Thinking, tokenizer=None
) -> dict[str, Any]:
    """One record; with `generation_prompt` its messages before the final answer, then the generation prompt."""
    messages, options = thinking_options(example.messages, thinking, example.tools)
    if generation_prompt:
        messages, options = messages[:-1], replace(options, add_generation_prompt=True)
    record = pieces_json(family.layout(messages, options))
    if generation_prompt:
        record["trained"] = []  # a prompt trains nothing
    if tokenizer is not None:
        rendered = render_conversation(messages, family, tokenizer, options=options)
        record |= {"ids": rendered.ids, "mask": [int(m and not generation_prompt) for m in rendered.mask]}
    return record


def pieces_json(pieces: Sequence[Piece]) -> dict[str, Any]:
    """The text of the pieces and their trained spans (adjacent trained pieces make one span)."""
    spans: list[str] = []
    previous_trained = False
    for piece in pieces:
        if piece.train and previous_trained:
            spans[-1] += piece.text
        elif piece.train:
            spans.append(piece.text)
        previous_trained = piece.train
    return {"text": "".join(piece.text for piece in pieces), "trained": spans}
