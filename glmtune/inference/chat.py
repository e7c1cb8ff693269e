"""`glmtune chat`: a streaming REPL with history, or one `--query` whose answer alone goes to stdout.

REPL commands: /clear forgets the history, /system TEXT sets the system prompt, /exit (or end of input) leaves.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from glmtune.checkpoints.export import generation_kwargs
from glmtune.checkpoints.load import Loaded, load_for_inference
from glmtune.console import quiet_libraries, term
from glmtune.errors import UsageError
from glmtune.families import Message
from glmtune.inference.generation import generate_answers
from glmtune.recipe import GenerationSection
from glmtune.rundir import run_recipe


def chat(
    source: Path,
    *,
    query: str | None = None,
    system: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
) -> None:
    check_overrides(max_new_tokens, temperature)
    quiet_libraries()
    loaded = load_for_inference(source)
    settings = generation_settings(loaded, max_new_tokens, temperature)
    if query is not None:
        messages = _with_system(system, [Message("user", query)])
        term.out(
            generate_answers(loaded.model, loaded.tokenizer, loaded.family, [messages], settings)[0], end="\n"
        )
        return
    repl(loaded, settings, system)


def generation_settings(
    loaded: Loaded, max_new_tokens: int | None, temperature: float | None
) -> dict[str, Any]:
    """generate() settings: the run's recipe [generation], or an exported folder's generation_config.json (which
    generate() reads itself), then the flags."""
    settings: dict[str, Any] = {}
    if loaded.run is not None:
        settings = generation_kwargs(run_recipe(loaded.source).generation)
    elif loaded.model.generation_config.max_new_tokens is None:
        # A folder glmtune did not export may set no limit, and generate() would stop at its max_length of 20.
        settings["max_new_tokens"] = GenerationSection().max_new_tokens
    if max_new_tokens is not None:
        settings["max_new_tokens"] = max_new_tokens
    if temperature:
        settings |= {"do_sample": True, "temperature": temperature}
    elif temperature == 0:  # the most likely token each time, as in most chat tools
        settings = {k: v for k, v in settings.items() if k not in ("temperature", "top_p")} | {
            "do_sample": False
        }
    return settings


def check_overrides(max_new_tokens: int | None, temperature: float | None) -> None:
    """Before the model loads: values generate() cannot use."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens: {max_new_tokens} generates nothing; give 1 or more")
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise UsageError(f"--temperature: {temperature} is not a temperature; give 0 (greedy) or more")


def _with_system(system: str | None, messages: list[Message]) -> list[Message]:
    return [Message("system", system), *messages] if system else messages


def repl(loaded: Loaded, settings: dict[str, Any], system: str | None) -> None:
    streamer = _streamer(loaded.tokenizer)
    history: list[Message] = []
    term.info(f"chatting with {loaded.source} ({loaded.family.title}); /clear, /system TEXT, /exit")
    while True:
        line = _read_line()
        if line is None or line.strip() == "/exit":
            return
        line = line.strip()
        if not line:
            continue
        if line == "/clear":
            history = []
            term.info("history cleared")
            continue
        if line.startswith("/system"):
            system = line.removeprefix("/system").strip() or None
            term.info(f"system prompt {'set' if system else 'removed'}")
            continue
        messages = _with_system(system, [*history, Message("user", line)])
        term.out("[bold]assistant>[/] ", end="", markup=True)
        answer = generate_answers(
            loaded.model, loaded.tokenizer, loaded.family, [messages], settings, streamer=streamer
        )[0]
        term.out()
        history += [Message("user", line), Message("assistant", answer)]


def _read_line() -> str | None:
    if sys.stdin.isatty():
        term.out("[bold]user>[/] ", end="", markup=True)
    line = sys.stdin.readline()
    return line if line else None


def _streamer(tokenizer):
    from transformers import TextStreamer

    class TerminalStreamer(TextStreamer):
        started = False  # the layout's newline after the role token is generated too; don't echo it

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            term.out(text, end="")
            if stream_end:
                self.started = False

    return TerminalStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
