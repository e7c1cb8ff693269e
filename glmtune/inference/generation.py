"""Answer conversations with a loaded model: prompts rendered by the family layout, stopped on its stop tokens,
replies split by the family's own reply format (content, reasoning, tool calls).

Used by `chat` (one conversation, streamed), `eval` (many prompts, batched with left padding) and `serve`/`web`
(through `inference.engine`), so every command answers the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from glmtune.data.render import render_conversation, special_token_id, stop_token_ids
from glmtune.families import Family, Message, RenderOptions, ToolCall


@dataclass(frozen=True)
class Reply:
    content: str
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


def reply_text(tokenizer, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """The generated text up to the first stop token, special tokens written out (the reply formats use them)."""
    stops = set(stop_ids)
    end = next((i for i, token in enumerate(ids) if token in stops), len(ids))
    return tokenizer.decode(list(ids[:end]), skip_special_tokens=False)


def parse(family: Family, opening: str, text: str, tools: Sequence[Any] = ()) -> Reply:
    content, reasoning, calls = family.reply(opening + text, tools)
    return Reply(content, reasoning, list(calls))


def generate_replies(
    model,
    tokenizer,
    family: Family,
    conversations: Sequence[Sequence[Message]],
    settings: dict[str, Any],
    batch_size: int = 8,
    streamer=None,
    options: RenderOptions = RenderOptions(),
) -> list[Reply]:
    """One reply per conversation (each ends with a user or observation message)."""
    replies: list[Reply] = []
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        prompts = [
            render_conversation(c, family, tokenizer, add_generation_prompt=True, options=options)
            for c in batch
        ]
        texts = _generate_batch(model, tokenizer, family, [p.ids for p in prompts], settings, streamer)
        replies += [
            parse(family, p.opening, text, options.tools) for p, text in zip(prompts, texts, strict=True)
        ]
    return replies


def generate_answers(
    model, tokenizer, family: Family, conversations, settings, batch_size: int = 8, streamer=None
):
    """The content of each reply (what `chat --query` prints and `eval` scores)."""
    replies = generate_replies(model, tokenizer, family, conversations, settings, batch_size, streamer)
    return [reply.content for reply in replies]


def _generate_batch(
    model, tokenizer, family: Family, prompts: list[list[int]], settings: dict[str, Any], streamer
) -> list[str]:
    import torch

    width = max(len(p) for p in prompts)
    pad = special_token_id(tokenizer, family.pad_token)
    stop_ids = stop_token_ids(family, tokenizer)
    # Left padding: every prompt ends where generation starts.
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            eos_token_id=stop_ids,
            pad_token_id=pad,
            streamer=streamer,
            **settings,
        )
    return [reply_text(tokenizer, row[width:].tolist(), stop_ids) for row in output]
