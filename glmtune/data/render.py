"""Conversations to token ids and the loss mask. `render_conversations` is the ONE function that decides what is
trained (`render_conversation` is its batch of one).

The family record says which pieces a conversation renders to (special tokens by name, text) and which are trained;
this module turns them into ids, the text pieces of a whole batch of conversations in one tokenizer call. Text is
encoded with special-token splitting on, so a string such as "<|user|>" inside user data stays plain text and
cannot open a new role.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from rich.markup import escape

from glmtune.errors import UsageError
from glmtune.families import Family, Message, without_reasoning
from glmtune.families.base import RenderOptions

Thinking = Literal["template", "keep", "off"]


@dataclass(frozen=True)
class Rendered:
    ids: list[int]
    mask: list[bool]  # True where the token is a training target
    status: Literal["ok", "truncated", "dropped"] = "ok"
    opening: str = ""  # the generation prompt's text that the reply continues (parse the reply with it)
    changes: tuple[str, ...] = ()  # what truncation did, or why the sample was dropped


def special_token_id(tokenizer, name: str) -> int:
    """The id of special token `name`; fails with a message naming it rather than guessing."""
    token_id = tokenizer.convert_tokens_to_ids(name)
    if token_id is None or (token_id == tokenizer.unk_token_id and name != tokenizer.unk_token):
        raise UsageError(
            f"the tokenizer has no special token {name!r}; is model.family right for this checkpoint?"
        )
    return token_id


def thinking_options(
    messages: Sequence[Message], thinking: Thinking, tools: Sequence[Mapping[str, Any]] = ()
) -> tuple[list[Message], RenderOptions]:
    """The messages and render options of `[data] thinking`, the templates' own switches:
    "template": as the template renders at inference (thinking on, past reasoning cleared); "keep":
    `clear_thinking=false`, every turn's reasoning kept; "off": `enable_thinking=false`, reasoning dropped."""
    options = RenderOptions(
        tools=tuple(tools), enable_thinking=thinking != "off", clear_thinking=thinking != "keep"
    )
    if thinking == "off":
        messages = [without_reasoning(m) for m in messages]
    return list(messages), options


LEFT_OUT = {
    "template": "past reasoning cleared",
    "off": "reasoning dropped",
}  # stats key per `[data] thinking`


def reasoning_left_out(messages: Sequence[Message], thinking: Thinking, family: Family) -> bool:
    """Whether `[data] thinking` keeps reasoning of this conversation out of its training text (counted in the
    stats under LEFT_OUT): "off" drops every turn's; "template" clears the turns' before the last user message, as
    the template does at inference. Reasoning is `reasoning_content` or written inline (the family's parser)."""
    if thinking not in LEFT_OUT:
        return False
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    return any(
        message.role == "assistant"
        and (thinking == "off" or index < last_user)
        and _has_reasoning(message, family)
        for index, message in enumerate(messages)
    )


def _has_reasoning(message: Message, family: Family) -> bool:
    return bool((message.reasoning_content or "").strip() or (family.reply(message.content)[1] or "").strip())


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
    options: RenderOptions = RenderOptions(),
) -> Rendered:
    """Token ids and loss mask of one conversation: `render_conversations` of a batch of one."""
    options = replace(options, add_generation_prompt=add_generation_prompt or options.add_generation_prompt)
    return render_conversations([(messages, options)], family, tokenizer, mask_history=mask_history)[0]


def render_conversations(
    conversations: Sequence[tuple[Sequence[Message], RenderOptions]],
    family: Family,
    tokenizer,
    *,
    mask_history: bool = False,
) -> list[Rendered]:
    """Token ids and loss mask of each conversation in `family`'s layout (`options`: tools and thinking switches).

    Trained: every assistant turn's own tokens and the token that ends it (only the last turn's when
    `mask_history`), as the family's layout marks them. The text pieces of all the conversations are encoded in one
    batched tokenizer call, which gives each piece the ids that encoding it alone gives.
    """
    layouts = [family.layout(messages, options) for messages, options in conversations]
    encoded = iter(encode_texts([p.text for pieces in layouts for p in pieces if not p.special], tokenizer))
    special_ids: dict[str, int] = {}
    rendered = []
    for pieces in layouts:
        last_turn = max((piece.turn for piece in pieces if piece.train), default=-1)
        ids: list[int] = []
        mask: list[bool] = []
        for piece in pieces:
            if piece.special:
                if piece.text not in special_ids:
                    special_ids[piece.text] = special_token_id(tokenizer, piece.text)
                piece_ids = [special_ids[piece.text]]
            else:
                piece_ids = next(encoded)
            trained = piece.train and (not mask_history or piece.turn == last_turn)
            ids.extend(piece_ids)
            mask.extend([trained] * len(piece_ids))
        rendered.append(Rendered(ids, mask, opening="".join(p.text for p in pieces if p.opens_reply)))
    return rendered


def encode_texts(texts: Sequence[str], tokenizer) -> list[list[int]]:
    """The ids of each text, special-token strings in it encoded as plain text, in one batched tokenizer call.

    A fast tokenizer's backend is called directly: `encode_batch` with `encode_special_tokens` on is what the
    transformers call with `split_special_tokens=True` runs, without building a BatchEncoding per text. A backend
    that pads or truncates, or a tokenizer without one, goes through the transformers call.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    splitting = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        return [encoding.ids for encoding in backend.encode_batch(list(texts), add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = splitting


def render_sample(
    messages: Sequence[Message],
    family: Family,
    tokenizer,
    *,
    max_length: int,
    overlong: Literal["truncate", "drop"],
    mask_history: bool = False,
    cut: Literal["middle", "end"] = "middle",
    options: RenderOptions = RenderOptions(),
) -> Rendered:
    """`render_conversation` fitted to `max_length`: dropped, or truncated so that the task survives.

    Truncation drops the oldest rounds of history, then shortens the longest text of the current prompt (system or
    user) from the `cut` side, never below PROMPT_FLOOR tokens, and only then cuts the end of the answer's text.
    No user turn is emptied, and the answer's terminator is always kept: it is what teaches the model to stop.
    `changes` names what was done, for the stats table.
    """
    rendered = render_conversation(messages, family, tokenizer, mask_history=mask_history, options=options)
    if len(rendered.ids) <= max_length:
        return rendered
    if overlong == "drop":
        return Rendered([], [], "dropped", changes=("too long",))
    fitted = _Fitting(list(messages), family, tokenizer, mask_history, max_length, options)
    fitted.drop_history()
    fitted.cut_prompt(cut)
    fitted.cut_answer()
    if fitted.overflow > 0 or not any(fitted.rendered.mask):
        return Rendered([], [], "dropped", changes=("no room for the answer",))
    return replace(fitted.rendered, status="truncated", changes=tuple(fitted.changes))


PROMPT_FLOOR = 16  # tokens a shortened prompt text keeps at least (or a quarter of max_length, if more)


@dataclass
class _Fitting:
    """A conversation being shortened step by step; every step re-renders through `render_conversation`."""

    messages: list[Message]
    family: Family
    tokenizer: object
    mask_history: bool
    max_length: int
    options: RenderOptions
    changes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.render()

    def render(self) -> None:
        self.rendered = render_conversation(
            self.messages, self.family, self.tokenizer, mask_history=self.mask_history, options=self.options
        )

    @property
    def overflow(self) -> int:
        return len(self.rendered.ids) - self.max_length

    @property
    def answer_at(self) -> int:
        return max(i for i, m in enumerate(self.messages) if m.role == "assistant")

    def drop_history(self) -> None:
        while self.overflow > 0 and _drop_oldest_round(self.messages):
            self.render()
            self._note("history dropped")

    def cut_prompt(self, side: Literal["middle", "end"]) -> None:
        floor = max(PROMPT_FLOOR, self.max_length // 4)
        while self.overflow > 0:
            lengths = {i: self._length(i) for i in self._prompt_texts()}
            longest = max(lengths, key=lambda i: lengths[i], default=None)
            if longest is None or lengths[longest] <= floor:
                return
            keep = max(floor, lengths[longest] - self.overflow - (side == "middle"))  # room for the elision
            self.messages[longest] = _shorten(self.messages[longest], keep, side, self.tokenizer)
            self.render()
            self._note(f"prompt cut ({side})")

    def cut_answer(self) -> None:
        at = self.answer_at
        while self.overflow > 0 and self.messages[at].content:
            keep = max(0, self._length(at) - self.overflow)
            self.messages[at] = _shorten(self.messages[at], keep, "end", self.tokenizer)
            self.render()
            self._note("answer end cut")

    def _prompt_texts(self) -> list[int]:
        """System messages and the texts of the current round before the answer."""
        at = self.answer_at
        previous = max((i for i in range(at) if self.messages[i].role == "assistant"), default=-1)
        return [
            i
            for i in range(at)
            if self.messages[i].role != "assistant" and (i > previous or self.messages[i].role == "system")
        ]

    def _length(self, index: int) -> int:
        return len(_encode(self.messages[index].content, self.tokenizer))

    def _note(self, change: str) -> None:
        if change not in self.changes:
            self.changes.append(change)


def _encode(text: str, tokenizer) -> list[int]:
    return encode_texts([text], tokenizer)[0]


def _drop_oldest_round(messages: list[Message]) -> bool:
    """Remove the first user..assistant round before the final one; system messages stay."""
    starts = [i for i, m in enumerate(messages) if m.role == "user"]
    if len(starts) < 2:
        return False
    del messages[starts[0] : starts[1]]
    return True


ELISION = "…"  # joins the head and tail of a text cut in the middle


def _shorten(message: Message, keep: int, side: Literal["middle", "end"], tokenizer) -> Message:
    """`message` with its text cut to about `keep` tokens: its head (end) or its head and tail (middle)."""
    content = message.content
    ids = _encode(content, tokenizer)
    if side == "middle" and keep >= 2:
        head, tail = ids[: keep // 2], ids[len(ids) - (keep - keep // 2) :]
        text = tokenizer.decode(head) + ELISION + tokenizer.decode(tail)
        if len(text) >= len(content):  # decoding can merge bytes back; make sure we always make progress
            middle = len(content) // 2
            text = content[: max(0, middle - 1)] + ELISION + content[middle + 1 :]
    else:
        text = tokenizer.decode(ids[:keep]) if keep else ""
        if len(text) >= len(content):
            text = content[: max(0, len(content) - 1)]
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
