"""Answer conversations with a loaded model: prompts rendered by the family layout, stopped on its stop tokens.

Used by `chat` (one conversation, streamed) and `eval` (many prompts, batched with left padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from glmtune.data.render import render_conversation, special_token_id, stop_token_ids
from glmtune.families import Family, Message


def generate_answers(
    model,
    tokenizer,
    family: Family,
    conversations: Sequence[Sequence[Message]],
    settings: dict[str, Any],
    batch_size: int = 8,
    streamer=None,
) -> list[str]:
    """One answer per conversation (each ends with a user or observation message)."""
    answers: list[str] = []
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        prompts = [render_conversation(c, family, tokenizer, add_generation_prompt=True).ids for c in batch]
        answers += _generate_batch(model, tokenizer, family, prompts, settings, streamer)
    return answers


def _generate_batch(
    model, tokenizer, family: Family, prompts: list[list[int]], settings: dict[str, Any], streamer
) -> list[str]:
    import torch

    width = max(len(p) for p in prompts)
    pad = special_token_id(tokenizer, family.pad_token)
    # Left padding: every prompt ends where generation starts.
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            eos_token_id=stop_token_ids(family, tokenizer),
            pad_token_id=pad,
            streamer=streamer,
            **settings,
        )
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output]
