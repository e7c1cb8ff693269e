"""Conversations to token ids and the loss mask. `render_conversation` is the ONE function that decides what is trained.

The family record says which pieces a conversation renders to (special tokens by name, text) and which are trained;
this module turns them into ids. Text is encoded with special-token splitting on, so a string such as "<|user|>"
inside user data stays plain text and cannot open a new role.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from rich.markup import escape

from glmtune.errors import UsageError
from glmtune.families import Family, Message


@dataclass(frozen=True)
class Rendered:
    ids: list[int]
    mask: list[bool]  # True where the token is a training target
    status: Literal["ok", "truncated", "dropped"] = "ok"


def special_token_id(tokenizer, name: str) -> int:
    """The id of special token `name`; fails with a message naming it rather than guessing."""
    token_id = tokenizer.convert_tokens_to_ids(name)
    if token_id is None or (token_id == tokenizer.unk_token_id and name != tokenizer.unk_token):
        raise UsageError(
            f"the tokenizer has no special token {name!r}; is model.family right for this checkpoint?"
        )
    return token_id


def stop_token_ids(family: Family, tokenizer) -> list[int]:
    """Ids of the tokens generation stops on (also written into exported generation_config.json files)."""
    return [special_token_id(tokenizer, name) for name in family.stop_tokens]


def render_conversation(
    messages: Sequence[Message],
    family: Family,
    tokenizer,
    *,
    mask_history: bool = False,
    add_generation_prompt: bool = False,
) -> Rendered:
    """Token ids and loss mask of a conversation in `family`'s layout.

    Trained: every assistant turn's text and the token that ends it (only the last turn's when `mask_history`).
    """
    pieces = family.layout(messages, add_generation_prompt)
    last_turn = max((piece.turn for piece in pieces if piece.train), default=-1)
    ids: list[int] = []
    mask: list[bool] = []
    for piece in pieces:
        if piece.special:
            piece_ids = [special_token_id(tokenizer, piece.text)]
        else:
            piece_ids = tokenizer.encode(piece.text, add_special_tokens=False, split_special_tokens=True)
        trained = piece.train and (not mask_history or piece.turn == last_turn)
        ids.extend(piece_ids)
        mask.extend([trained] * len(piece_ids))
    return Rendered(ids, mask)


def render_sample(
    messages: Sequence[Message],
    family: Family,
    tokenizer,
    *,
    max_length: int,
    overlong: Literal["truncate", "drop"],
    mask_history: bool = False,
) -> Rendered:
    """`render_conversation` fitted to `max_length`: dropped, or truncated on the prompt side first.

    Truncation drops the oldest rounds of history, then cuts the end of the last prompt message, and only then the
    end of the answer's text; the answer's terminator is always kept, since it is what teaches the model to stop.
    """
    rendered = render_conversation(messages, family, tokenizer, mask_history=mask_history)
    if len(rendered.ids) <= max_length:
        return rendered
    if overlong == "drop":
        return Rendered([], [], "dropped")
    messages = list(messages)
    while len(rendered.ids) > max_length and _drop_oldest_round(messages):
        rendered = render_conversation(messages, family, tokenizer, mask_history=mask_history)
    answer_at = max(i for i, m in enumerate(messages) if m.role == "assistant")
    for target in (answer_at - 1, answer_at):
        while len(rendered.ids) > max_length and messages[target].content:
            overflow = len(rendered.ids) - max_length
            messages[target] = _cut_tail(messages[target], overflow, tokenizer)
            rendered = render_conversation(messages, family, tokenizer, mask_history=mask_history)
    if len(rendered.ids) > max_length or not any(rendered.mask):
        return Rendered([], [], "dropped")
    return replace(rendered, status="truncated")


def _drop_oldest_round(messages: list[Message]) -> bool:
    """Remove the first user..assistant round before the final one; system messages stay."""
    starts = [i for i, m in enumerate(messages) if m.role == "user"]
    if len(starts) < 2:
        return False
    del messages[starts[0] : starts[1]]
    return True


def _cut_tail(message: Message, overflow: int, tokenizer) -> Message:
    ids = tokenizer.encode(message.content, add_special_tokens=False, split_special_tokens=True)
    keep = max(0, len(ids) - overflow)
    text = tokenizer.decode(ids[:keep]) if keep else ""
    if len(text) >= len(message.content):  # decoding can merge bytes back; make sure we always make progress
        text = message.content[: max(0, len(message.content) - 1)]
    return replace(message, content=text)


def show(ids: Sequence[int], mask: Sequence[bool], tokenizer) -> str:
    """Rich markup of a sample: trained tokens in green, the rest dimmed; for `prepare --show`."""
    parts = []
    for run_ids, trained in _runs(ids, mask):
        text = escape(tokenizer.decode(run_ids, skip_special_tokens=False))
        parts.append(f"[bold green]{text}[/]" if trained else f"[dim]{text}[/]")
    return "".join(parts)


def _runs(ids: Sequence[int], mask: Sequence[bool]) -> list[tuple[list[int], bool]]:
    runs: list[tuple[list[int], bool]] = []
    for token_id, trained in zip(ids, mask, strict=True):
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(token_id)
        else:
            runs.append(([token_id], trained))
    return runs
