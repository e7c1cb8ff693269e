"""The transformers generation engine behind `glmtune serve`: one model, one request at a time, streamed.

Requests wait in a first-come queue (a lock) and run one after the other on the model: batching requests of
different lengths and settings into one `generate()` would change their greedy answers (left padding shifts
positions for some architectures), and an answer must equal `glmtune chat --query` for the same input. Tokens are
handed to the caller as they are generated, so a streaming client sees the first token while the rest is computed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from glmtune.checkpoints.load import Loaded
from glmtune.data.render import Rendered, render_conversation, stop_token_ids
from glmtune.families import Message, RenderOptions
from glmtune.inference.generation import Reply, parse


@dataclass(frozen=True)
class Sampling:
    """What one request asks of generate(); `temperature` None or 0 means greedy, as in the OpenAI API."""

    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # the run's [generation] settings

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs = {**self.defaults, "max_new_tokens": self.max_new_tokens}
        if self.temperature is not None:
            for knob in ("do_sample", "temperature", "top_p"):
                kwargs.pop(knob, None)
            kwargs["do_sample"] = self.temperature > 0
            if self.temperature > 0:
                kwargs["temperature"] = self.temperature
        if self.top_p is not None and kwargs.get("do_sample"):
            kwargs["top_p"] = self.top_p
        return kwargs


@dataclass(frozen=True)
class Completion:
    text: str  # the generated text, special tokens written out, without the stop token or stop string
    completion_tokens: int
    finish_reason: str  # "stop" (a stop token or stop string) or "length"


class Engine:
    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.stop_ids = stop_token_ids(loaded.family, loaded.tokenizer)
        self._turn = threading.Lock()

    @property
    def default_max_new_tokens(self) -> int:
        """The folder's generation_config.json limit, as `chat` uses it."""
        return int(getattr(self.loaded.model.generation_config, "max_new_tokens", None) or 256)

    @property
    def context_length(self) -> int:
        config = self.loaded.model.config
        return int(getattr(config, "max_position_embeddings", 0) or getattr(config, "seq_length", 0) or 2048)

    def prompt(self, messages: Sequence[Message], options: RenderOptions = RenderOptions()) -> Rendered:
        """The family's inference prompt for `messages` (the renderer `chat` and `eval` use)."""
        loaded = self.loaded
        return render_conversation(
            messages, loaded.family, loaded.tokenizer, add_generation_prompt=True, options=options
        )

    def reply(self, prompt: Rendered, text: str, tools: Sequence = ()) -> Reply:
        return parse(self.loaded.family, prompt.opening, text, tools)

    def reply_so_far(self, prompt: Rendered, text: str) -> tuple[str, str]:
        content, reasoning = self.loaded.family.reply_so_far(prompt.opening + text)
        return content or "", reasoning or ""

    @property
    def has_adapter(self) -> bool:
        return hasattr(
            self.loaded.model, "disable_adapter"
        )  # a peft model: base answers with the adapter off

    def stream(
        self, prompt: Sequence[int], sampling: Sampling, adapter: bool = True
    ) -> Iterator[str | Completion]:
        """`generate` as an iterator: text pieces as they come, then the Completion."""
        pieces: queue.Queue[str | Completion | BaseException] = queue.Queue()

        def work() -> None:
            try:
                pieces.put(self.generate(prompt, sampling, on_text=pieces.put, adapter=adapter))
            except BaseException as exc:  # handed to the reader, which raises it in its own thread
                pieces.put(exc)

        threading.Thread(target=work, daemon=True).start()
        while True:
            item = pieces.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Completion):
                return

    def generate(
        self,
        prompt: Sequence[int],
        sampling: Sampling,
        on_text: Callable[[str], None] | None = None,
        adapter: bool = True,
    ) -> Completion:
        """Generate after `prompt`; `on_text` receives each new piece of text (stop strings held back). With
        `adapter` False a LoRA model answers as its base."""
        import contextlib

        import torch

        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        streamer = _TextPieces(tokenizer, self.stop_ids, sampling.stop, on_text)
        input_ids = torch.tensor([list(prompt)], device=model.device)
        base = model.disable_adapter() if not adapter else contextlib.nullcontext()
        with self._turn, torch.no_grad(), base:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                eos_token_id=self.stop_ids,
                pad_token_id=tokenizer.pad_token_id,
                streamer=streamer,
                **({"stop_strings": list(sampling.stop), "tokenizer": tokenizer} if sampling.stop else {}),
                **sampling.generate_kwargs(),
            )
        return streamer.completion(sampling.max_new_tokens)


class _TextPieces:
    """A generate() streamer that decodes the new tokens incrementally and cuts at the first stop string.

    It decodes the whole answer so far each time (multi-byte characters span tokens) and passes on only text that
    can no longer be the beginning of a stop string.
    """

    def __init__(self, tokenizer, stop_ids: list[int], stop: tuple[str, ...], on_text) -> None:
        self.tokenizer, self.stop_ids, self.stop, self.on_text = tokenizer, set(stop_ids), stop, on_text
        self.prompt_seen = False
        self.ids: list[int] = []
        self.sent = 0
        self.ended_by: str | None = None
        self.stop_token_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        if self.ended_by is not None:
            return
        for token in value.reshape(-1).tolist():
            if token in self.stop_ids:
                self.ended_by, self.stop_token_seen = "stop", True
                break
            self.ids.append(token)
        self._flush(final=self.ended_by is not None)

    def end(self) -> None:
        self._flush(final=True)

    def text(self, final: bool = False) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if not final and text.endswith("\ufffd"):  # perhaps a multi-byte character the next token finishes
            return text[:-1]
        return text

    def _flush(self, final: bool) -> None:
        text = self.text(final)
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            text, final, self.ended_by = text[:cut], True, "stop"
        safe = len(text) if final else len(text) - _held_back(text, self.stop)
        if safe > self.sent and self.on_text is not None:
            self.on_text(text[self.sent : safe])
        self.sent = max(self.sent, safe)

    def completion(self, max_new_tokens: int) -> Completion:
        text = self.text(final=True)
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        reason = self.ended_by or ("length" if len(self.ids) >= max_new_tokens else "stop")
        return Completion(text, len(self.ids) + int(self.stop_token_seen), reason)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                longest = max(longest, size)
                break
    return longest
