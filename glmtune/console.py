"""The one object that talks to the terminal: semantic calls on stderr, silent on ranks other than 0.

stdout is kept for data (a `chat --query` answer, `prepare --show` samples go through `out`), so pipelines can use it.
When stderr is a file or a pipe, nothing is wrapped and training progress is one plain line per logging step.
`quiet_libraries` turns off the libraries' own progress bars and chatter, which would interleave with this output.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def _is_rank_zero() -> bool:
    # Launchers (deepspeed, torchrun) set RANK for every worker; only the first one speaks.
    return os.environ.get("RANK", "0") == "0"


# Libraries that log at import time, before any command could quiet them: bitsandbytes (which peft imports whenever
# it is installed) warns about an optional CPU kernel package on every run, quantized or not.
IMPORT_CHATTER = ("bitsandbytes",)


def quiet_import_chatter() -> None:
    for name in IMPORT_CHATTER:
        logging.getLogger(name).setLevel(logging.ERROR)


class Terminal:
    def __init__(self) -> None:
        quiet_import_chatter()  # glmtune owns stderr from here on
        self.err = Console(stderr=True, highlight=False, quiet=not _is_rank_zero())
        if not self.err.is_terminal:  # a log file or pipe: keep every line whole, however long
            self.err.soft_wrap, self.err.width = True, 1000
        self.stdout = Console(highlight=False, soft_wrap=True)

    def info(self, message: str, markup: bool = False) -> None:
        self.err.print(message if markup else escape(message))

    def step(self, message: str) -> None:
        self.err.print(f"[bold cyan]›[/] {escape(message)}")

    def ok(self, message: str) -> None:
        self.err.print(f"[bold green]✓[/] {escape(message)}")

    def warn(self, message: str) -> None:
        self.err.print(f"[bold yellow]warning:[/] {escape(message)}")

    def error(self, message: str) -> None:
        # Errors are printed on every rank: a failing worker must be heard.
        Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)

    def table(self, title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        table = Table(title=escape(title), title_justify="left")
        for column in columns:
            table.add_column(column, justify="left" if column == columns[0] else "right")
        for row in rows:
            table.add_row(*(escape(_cell(value)) for value in row))
        self.err.print(table)

    def out(self, text: str = "", end: str = "\n", markup: bool = False) -> None:
        """Data for stdout (answers, rendered samples), printed as is unless `markup` is asked for."""
        self.stdout.print(text, end=end, markup=markup, highlight=False, emoji=False)  # data stays as written


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


term = Terminal()


def quiet_libraries() -> None:
    """Progress bars, banners and deprecation chatter of the libraries would interleave with our output."""
    import logging
    import warnings

    import torch

    # bitsandbytes warns at import about an optional kernel package; DeepSpeed warns that it fell back to the CPU.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # states the fact DeepSpeed would otherwise warn about
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings(
        "ignore", message=".*torch.distributed.* is deprecated.*", category=FutureWarning
    )  # DeepSpeed's

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def progress_callback():
    """A transformers TrainerCallback for loss, learning rate, tokens/s and time: a rich progress bar on a terminal;
    in a file or pipe (where a bar shows nothing until the run ends) one plain line every `logging_steps`."""
    from transformers import TrainerCallback

    class TrainProgressCallback(TrainProgress, TrainerCallback):
        """TrainProgress's hooks first; the base class answers the events it leaves alone."""

    return TrainProgressCallback()


class TrainProgress:
    """The hooks behind `progress_callback`, kept apart from transformers so that importing this module stays light."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: Any = None
        self.active = False
        self.started = 0.0
        self.fields = {"loss": "-", "lr": "-", "tps": "-", "epoch": "0.00"}

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.active, self.started = True, time.perf_counter()
        if term.err.is_terminal:
            self.bar = progress_bar()
            self.bar.start()
            self.task = self.bar.add_task("train", total=state.max_steps, **self.fields)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step, **self.measure(state))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.active or not logs:
            return
        self.take(logs)
        if "eval_loss" in logs:
            (self.bar.console if self.bar else term.err).print(
                f"  step {state.global_step}: eval loss {logs['eval_loss']:.4f}"
            )
        if self.bar is not None:
            self.bar.update(self.task, **self.fields)
        elif "loss" in logs:
            term.info(plain_progress_line(state, self.measure(state), time.perf_counter() - self.started))

    def take(self, logs: dict[str, float]) -> None:
        """The logged loss and learning rate, as the bar and the plain line show them."""
        if "loss" in logs:
            self.fields["loss"] = f"{logs['loss']:.4f}"
        if "learning_rate" in logs:
            self.fields["lr"] = f"{logs['learning_rate']:.2e}"

    def measure(self, state) -> dict[str, str]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.fields["tps"] = f"{state.num_input_tokens_seen / elapsed:,.0f}"
        self.fields["epoch"] = f"{state.epoch or 0:.2f}"
        return self.fields

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)
        self.close()

    def close(self) -> None:
        self.active = False
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "epoch {task.fields[epoch]} · loss {task.fields[loss]} · lr {task.fields[lr]} · {task.fields[tps]} tok/s"
        ),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=term.err,
        transient=False,
    )


def plain_progress_line(state, fields: dict[str, str], elapsed: float) -> str:
    return (
        f"train step {state.global_step}/{state.max_steps} · epoch {fields['epoch']} · loss {fields['loss']} · "
        f"lr {fields['lr']} · {fields['tps']} tok/s · {elapsed:.0f}s"
    )
