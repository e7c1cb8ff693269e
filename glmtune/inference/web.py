"""`glmtune web`: a browser page (gradio) to try a tuned model and to write new training records beside it.

Playground: chat with streaming, history, a system prompt and generation settings; with `--base` (a LoRA run) the
base model answers the same conversation side by side, the adapter switched off. Label: write an
instruction/input/output record, optionally drafted by the model and corrected, or save the playground's conversation;
records are appended to `--data FILE` (messages jsonl) atomically, after the same checks `glmtune prepare` makes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from glmtune.data.formats import check_record
from glmtune.errors import UsageError
from glmtune.families import Message
from glmtune.inference.engine import Completion, Engine, Sampling
from glmtune.rundir import atomic_write_text

History = list[dict[str, Any]]  # gradio's messages format: {"role": ..., "content": ...}


class LabelFile:
    """The --data file: records are checked like prepare checks them and appended by writing the file anew."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists() and not path.is_file():
            raise UsageError(f"--data: {path} is not a file")
        if path.suffix != ".jsonl":
            raise UsageError(f"--data: {path} must be a .jsonl file (one messages record per line)")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [
            json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]

    def append(self, messages: list[dict[str, str]]) -> int:
        """Check and append one record; returns the record count. Raises UsageError with prepare's message."""
        record = {"messages": messages}
        count = len(self.records())
        check_record(record, f"{self.path}:{count + 1}", "messages")
        old = self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(self.path, old + json.dumps(record, ensure_ascii=False) + "\n")
        return count + 1


def to_messages(history: History, system: str) -> list[Message]:
    messages = [Message("system", system)] if system.strip() else []
    return messages + [Message(turn["role"], _text(turn["content"])) for turn in history]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # gradio may hand content back as a list of parts
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def answer(
    engine: Engine, messages: list[Message], sampling: Sampling, adapter: bool = True
) -> Iterator[str]:
    """The answer so far, growing as tokens arrive; the final one is the parsed reply's content."""
    text, prompt = "", engine.prompt(messages)
    for item in engine.stream(prompt.ids, sampling, adapter=adapter):
        if isinstance(item, Completion):
            yield engine.reply(prompt, item.text).content
            return
        text += item
        yield engine.reply_so_far(prompt, text)[0]


def build_app(engine: Engine, *, compare_base: bool, labels: LabelFile | None, defaults: dict[str, Any]):
    """The page: the shared settings above a Playground tab and a Label tab, their buttons wired to `WebActions`."""
    import gradio as gr

    actions = WebActions(engine, compare_base, labels, defaults)
    title = f"glmtune · {engine.loaded.source.name} ({engine.loaded.family.title})"
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"### {title}")
        system, tokens, temp = _settings(int(defaults.get("max_new_tokens", 256)))
        with gr.Tab("Playground"):
            chat = _playground(compare_base)
        with gr.Tab("Label"):
            form = _label_form(labels)
        talk = [chat.message, chat.tuned, chat.base]
        chat.message.submit(actions.respond, [*talk, system, tokens, temp], talk)
        chat.clear.click(lambda: ([], []), None, [chat.tuned, chat.base])
        chat.keep.click(actions.save_conversation, [chat.tuned, system], [chat.saved, form.last])
        form.draft.click(actions.draft, [form.instruction, form.extra, system, tokens, temp], form.output)
        record = [form.instruction, form.extra, form.output, system]
        form.save.click(actions.save_record, record, [form.status, form.last])
    return app


def _settings(budget: int) -> tuple[Any, Any, Any]:
    """The system prompt and the generation settings both tabs use."""
    import gradio as gr

    system = gr.Textbox(label="System prompt", lines=1, elem_id="system")
    with gr.Row():
        tokens = gr.Slider(1, 4096, value=budget, step=1, label="Max new tokens", elem_id="max-new-tokens")
        temp = gr.Slider(
            0.0, 2.0, value=0.0, step=0.05, label="Temperature (0: greedy)", elem_id="temperature"
        )
    return system, tokens, temp


class _Playground(NamedTuple):
    tuned: Any
    base: Any
    message: Any
    clear: Any
    keep: Any
    saved: Any


def _playground(compare_base: bool) -> _Playground:
    """The tuned model's chat, the base model's beside it when compared, the message box and its buttons."""
    import gradio as gr

    with gr.Row():
        tuned = gr.Chatbot(label="Tuned", elem_id="tuned", height=420)
        base = gr.Chatbot(label="Base (adapter off)", elem_id="base", height=420, visible=compare_base)
    message = gr.Textbox(label="Message", placeholder="Type and press Enter", elem_id="message")
    with gr.Row():
        clear = gr.Button("Clear", elem_id="clear")
        keep = gr.Button("Save this conversation as a record", elem_id="save-conversation")
    return _Playground(tuned, base, message, clear, keep, gr.Markdown(elem_id="saved-conversation"))


class _LabelForm(NamedTuple):
    instruction: Any
    extra: Any
    output: Any
    draft: Any
    save: Any
    status: Any
    last: Any


def _label_form(labels: LabelFile | None) -> _LabelForm:
    """An instruction/input/output record, a button to draft the output, one to save, and the file's last records."""
    import gradio as gr

    instruction = gr.Textbox(label="Instruction", lines=2, elem_id="instruction")
    extra = gr.Textbox(label="Input (optional)", lines=2, elem_id="input")
    output = gr.Textbox(label="Output", lines=4, elem_id="output")
    with gr.Row():
        draft = gr.Button("Draft the output with the model", elem_id="draft")
        save = gr.Button("Save record", variant="primary", elem_id="save")
    status = gr.Markdown(_count(labels), elem_id="status")
    last = gr.JSON(_last(labels) if labels else [], label="Last records", elem_id="last")
    return _LabelForm(instruction, extra, output, draft, save, status, last)


@dataclass(frozen=True)
class WebActions:
    """What the page's buttons do: answer (and the base model beside), draft an output, save records."""

    engine: Engine
    compare_base: bool
    labels: LabelFile | None
    defaults: dict[str, Any]

    def sampling(self, max_new_tokens: float, temperature: float) -> Sampling:
        return Sampling(int(max_new_tokens), float(temperature), defaults=self.defaults)

    def respond(
        self, message: str, history: History, base_history: History, system: str, tokens: float, temp: float
    ):
        if not message.strip():
            yield "", history, base_history
            return
        turn = [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        history, base_history = [*history, *turn], [*base_history, *turn]
        settings = self.sampling(tokens, temp)
        for text in answer(self.engine, to_messages(history[:-1], system), settings):
            history[-1] = {"role": "assistant", "content": text}
            yield "", history, base_history
        if self.compare_base:
            messages = to_messages(base_history[:-1], system)
            for text in answer(self.engine, messages, settings, adapter=False):
                base_history[-1] = {"role": "assistant", "content": text}
                yield "", history, base_history

    def save_conversation(self, history: History, system: str):
        turns = [{"role": "system", "content": system}] if system.strip() else []
        turns += [{"role": t["role"], "content": _text(t["content"])} for t in history]
        return self.save(turns)

    def draft(self, instruction: str, extra: str, system: str, tokens: float, temp: float):
        import gradio as gr

        prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
        if not prompt.strip():
            raise gr.Error("write an instruction first")
        messages = to_messages([{"role": "user", "content": prompt}], system)
        final = ""
        for final in answer(self.engine, messages, self.sampling(tokens, temp)):
            yield final
        yield final

    def save_record(self, instruction: str, extra: str, output: str, system: str):
        prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
        turns = [{"role": "system", "content": system}] if system.strip() else []
        return self.save(
            [*turns, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        )

    def save(self, turns: list[dict[str, str]]):
        """Append a record to --data; gradio shows a refusal (prepare's message) on the page."""
        import gradio as gr

        if self.labels is None:
            raise gr.Error("start glmtune web with --data FILE to save records")
        try:
            count = self.labels.append(turns)
        except UsageError as exc:
            raise gr.Error(str(exc)) from None
        return f"saved: {count} records in {self.labels.path}", _last(self.labels)


def _count(labels: LabelFile | None) -> str:
    if labels is None:
        return "no --data file: records cannot be saved"
    return f"{len(labels.records())} records in {labels.path}"


def _last(labels: LabelFile, count: int = 5) -> list[dict[str, Any]]:
    return labels.records()[-count:]


def web(source: Path, *, host: str, port: int, base: bool, data: Path | None) -> None:
    from glmtune.checkpoints.load import load_for_inference
    from glmtune.console import quiet_libraries, term
    from glmtune.inference.chat import generation_settings

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    labels = LabelFile(data) if data is not None else None
    quiet_libraries()
    loaded = load_for_inference(source)
    engine = Engine(loaded)
    if base and not engine.has_adapter:
        raise UsageError(
            f"--base: {source} is not a LoRA run directory; the base comparison switches its adapter off"
        )
    defaults = generation_settings(loaded, None, None)
    app = build_app(engine, compare_base=base, labels=labels, defaults=defaults)
    term.ok(f"glmtune web on http://{host}:{port} (Ctrl-C stops)")
    app.queue().launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True)
