"""The one object that talks to the terminal: semantic calls on stderr, silent on ranks other than 0.

stdout is kept for data (a `chat --query` answer, `prepare --show` samples go through `out`), so pipelines can use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _is_rank_zero() -> bool:
    # Launchers (deepspeed, torchrun) set RANK for every worker; only the first one speaks.
    return os.environ.get("RANK", "0") == "0"


class Terminal:
    def __init__(self) -> None:
        self.err = Console(stderr=True, highlight=False, quiet=not _is_rank_zero())
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


def progress_callback():
    """A transformers TrainerCallback that shows a rich progress bar with loss, learning rate, tokens/s and ETA."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Progress | None = None
            self.task = None
            self.started = 0.0
            self.fields = {"loss": "-", "lr": "-", "tps": "-", "epoch": "0.00"}

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            self.progress = Progress(
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
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, **self.fields)
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is None:
                return
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.fields["tps"] = f"{state.num_input_tokens_seen / elapsed:,.0f}"
            self.fields["epoch"] = f"{state.epoch or 0:.2f}"
            self.progress.update(self.task, completed=state.global_step, **self.fields)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is None or not logs:
                return
            if "loss" in logs:
                self.fields["loss"] = f"{logs['loss']:.4f}"
            if "learning_rate" in logs:
                self.fields["lr"] = f"{logs['learning_rate']:.2e}"
            if "eval_loss" in logs:
                self.progress.console.print(f"  step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
            self.progress.update(self.task, **self.fields)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)
            self.close()

        def close(self) -> None:
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichProgress()
