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
from pathlib import Path
from typing import Any

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
    import gradio as gr

    title = f"glmtune · {engine.loaded.source.name} ({engine.loaded.family.title})"
    budget = int(defaults.get("max_new_tokens", 256))

    def sampling(max_new_tokens: float, temperature: float) -> Sampling:
        return Sampling(int(max_new_tokens), float(temperature), defaults=defaults)

    def respond(
        message: str, history: History, base_history: History, system: str, tokens: float, temp: float
    ):
        if not message.strip():
            yield "", history, base_history
            return
        history = [*history, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        base_history = [
            *base_history,
            {"role": "user", "content": message},
            {"role": "assistant", "content": ""},
        ]
        settings = sampling(tokens, temp)
        for text in answer(engine, to_messages(history[:-1], system), settings):
            history[-1] = {"role": "assistant", "content": text}
            yield "", history, base_history
        if compare_base:
            for text in answer(engine, to_messages(base_history[:-1], system), settings, adapter=False):
                base_history[-1] = {"role": "assistant", "content": text}
                yield "", history, base_history

    def save_conversation(history: History, system: str):
        turns = [{"role": "system", "content": system}] if system.strip() else []
        turns += [{"role": t["role"], "content": _text(t["content"])} for t in history]
        return _save(turns)

    def draft(instruction: str, extra: str, system: str, tokens: float, temp: float):
        prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
        if not prompt.strip():
            raise gr.Error("write an instruction first")
        final = ""
        for final in answer(
            engine, to_messages([{"role": "user", "content": prompt}], system), sampling(tokens, temp)
        ):
            yield final
        yield final

    def save_record(instruction: str, extra: str, output: str, system: str):
        prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
        turns = [{"role": "system", "content": system}] if system.strip() else []
        return _save([*turns, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}])

    def _save(turns: list[dict[str, str]]):
        if labels is None:
            raise gr.Error("start glmtune web with --data FILE to save records")
        try:
            count = labels.append(turns)
        except UsageError as exc:
            raise gr.Error(str(exc)) from None
        return f"saved: {count} records in {labels.path}", _last(labels)

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"### {title}")
        system = gr.Textbox(label="System prompt", lines=1, elem_id="system")
        with gr.Row():
            tokens = gr.Slider(
                1, 4096, value=budget, step=1, label="Max new tokens", elem_id="max-new-tokens"
            )
            temp = gr.Slider(
                0.0, 2.0, value=0.0, step=0.05, label="Temperature (0: greedy)", elem_id="temperature"
            )
        with gr.Tab("Playground"):
            with gr.Row():
                tuned = gr.Chatbot(label="Tuned", elem_id="tuned", height=420)
                base = gr.Chatbot(
                    label="Base (adapter off)", elem_id="base", height=420, visible=compare_base
                )
            message = gr.Textbox(label="Message", placeholder="Type and press Enter", elem_id="message")
            with gr.Row():
                clear = gr.Button("Clear", elem_id="clear")
                keep = gr.Button("Save this conversation as a record", elem_id="save-conversation")
            saved_chat = gr.Markdown(elem_id="saved-conversation")
        with gr.Tab("Label"):
            instruction = gr.Textbox(label="Instruction", lines=2, elem_id="instruction")
            extra = gr.Textbox(label="Input (optional)", lines=2, elem_id="input")
            output = gr.Textbox(label="Output", lines=4, elem_id="output")
            with gr.Row():
                draft_button = gr.Button("Draft the output with the model", elem_id="draft")
                save_button = gr.Button("Save record", variant="primary", elem_id="save")
            status = gr.Markdown(_count(labels), elem_id="status")
            last = gr.JSON(_last(labels) if labels else [], label="Last records", elem_id="last")
        message.submit(respond, [message, tuned, base, system, tokens, temp], [message, tuned, base])
        clear.click(lambda: ([], []), None, [tuned, base])
        keep.click(save_conversation, [tuned, system], [saved_chat, last])
        draft_button.click(draft, [instruction, extra, system, tokens, temp], output)
        save_button.click(save_record, [instruction, extra, output, system], [status, last])
    return app


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
