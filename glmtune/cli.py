"""The `glmtune` command line: each command parses its arguments, calls one function and reports.

Heavy libraries (torch, transformers) are imported inside the commands, so `glmtune --help` starts instantly.
A `UsageError` anywhere, and a usage mistake Typer finds, becomes one line on stderr and exit code 2. Anything else
is a bug: one line names it and the file holding its full traceback (`glmtune --debug ...` prints it too), exit 1.
The process is offline: the hub switches are set before any library that could reach the network is imported.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from glmtune.console import term
from glmtune.errors import UsageError

app = typer.Typer(
    name="glmtune",
    help="Fine-tune GLM-family chat models (ChatGLM-6B … GLM-5.3): prepare, train, export, chat, eval, convert, "
    "render.\n\n"
    "Example: glmtune train recipes/demo.toml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RecipeArg = Annotated[Path, typer.Argument(help="TOML recipe file.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a recipe key, e.g. --set train.epochs=2; relative paths are read from the current folder.",
    ),
]


class Layout(str, Enum):
    native = "native"
    original = "original"


SourceArg = Annotated[
    Path, typer.Argument(help="A glmtune run directory or an exported model folder.", show_default=False)
]


OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an earlier glmtune output there (never anything else).")
]
DEBUG = {"on": False}


@app.callback()
def options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Print the full traceback of an unexpected error.")
    ] = False,
) -> None:
    DEBUG["on"] = debug


def _recipe(path: Path, overrides: list[str] | None):
    from glmtune.recipe_files import load_recipe

    return load_recipe(path, overrides or [])


@app.command(epilog="Example: glmtune prepare recipes/self_cognition.toml --show 2")
def prepare(
    recipe: RecipeArg,
    set_: SetOpt = None,
    show: Annotated[int, typer.Option(help="Print N samples with trained tokens in green.")] = 0,
) -> None:
    """Tokenize the recipe's data into its run directory (reused by train when unchanged)."""
    from glmtune.training.train import prepare_run

    prepare_run(_recipe(recipe, set_), show=show)


@app.command(epilog="Example: glmtune train recipes/demo.toml --set train.epochs=5")
def train(
    recipe: RecipeArg,
    set_: SetOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved recipe and plan; train nothing.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run from its latest complete checkpoint.")
    ] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fine-tune with LoRA or full fine-tuning; writes a self-describing run directory."""
    from glmtune.training.train import train as run_training

    run_training(_recipe(recipe, set_), dry_run=dry_run, resume=resume, overwrite=overwrite)


@app.command(epilog="Example: glmtune export runs/demo --out exports/demo")
def export(
    source: SourceArg,
    out: Annotated[Path, typer.Option("--out", help="Folder to write the merged model to.")],
    layout: Annotated[
        Layout,
        typer.Option(
            help="native: transformers' own class; original: the base's remote-code ChatGLM layout."
        ),
    ] = Layout.native,
    overwrite: OverwriteOpt = False,
) -> None:
    """Merge the run's adapter into its base and write a model that loads with plain transformers."""
    from glmtune.checkpoints.export import export_run

    export_run(source, out, layout=layout.value, overwrite=overwrite)


@app.command(epilog="Example: glmtune convert ~/models/chatglm3-6b --out ~/models/chatglm3-6b-native")
def convert(
    source: Annotated[
        Path,
        typer.Argument(
            help="An original remote-code ChatGLM2/3 or GLM-4-9B-chat folder.", show_default=False
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the native model to.")],
    family: Annotated[str, typer.Option(help="Family name; default: detected from the folder.")] = "auto",
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Read pickled *.bin weights (only files you trust).")
    ] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write an original-layout ChatGLM checkpoint once as a folder plain transformers loads: transformers' Glm
    (ChatGLM2/3, GLM-4), or glmtune's ChatGLM-6B port (v1) with its module file as remote code."""
    from glmtune.checkpoints.original import convert_checkpoint

    loads_as = convert_checkpoint(source, out, family=family, allow_pickle=allow_pickle, overwrite=overwrite)
    term.ok(f"converted {source} to {out} ({loads_as})")


@app.command(epilog='Example: glmtune chat runs/demo --query "你是谁？"')
def chat(
    source: SourceArg,
    query: Annotated[
        str | None, typer.Option(help="Ask one question, print only the answer on stdout.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            help="Default: generation.max_new_tokens of the run's recipe or the export's generation_config.json."
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (turns sampling on).")
    ] = None,
) -> None:
    """Chat with a run or an exported model; without --query an interactive REPL (/clear, /system TEXT, /exit)."""
    from glmtune.inference.chat import chat as run_chat

    run_chat(source, query=query, system=system, max_new_tokens=max_new_tokens, temperature=temperature)


class Engine(str, Enum):
    auto = "auto"
    transformers = "transformers"
    vllm = "vllm"


@app.command(
    epilog="Example: glmtune serve runs/demo-export --port 8000  (then point an OpenAI client at /v1)"
)
def serve(
    source: SourceArg,
    host: Annotated[
        str, typer.Option(help="Address to bind; other machines reach it only if you say so.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(help="Require Authorization: Bearer KEY on every request.")
    ] = None,
    engine: Annotated[
        Engine, typer.Option(help="transformers runs here (CPU or GPU); vllm hands an export to vLLM.")
    ] = Engine.auto,
    model_name: Annotated[
        str | None, typer.Option(help="Model id clients send; default: the folder name.")
    ] = None,
) -> None:
    """Serve a run or an exported model over an OpenAI-compatible API (/v1/chat/completions, /v1/models)."""
    from glmtune.inference.serve import serve as run_server

    run_server(source, host=host, port=port, api_key=api_key, engine=engine.value, model_name=model_name)


@app.command(epilog="Example: glmtune web runs/demo --base --data data/labelled.jsonl")
def web(
    source: SourceArg,
    host: Annotated[
        str, typer.Option(help="Address to bind; other machines reach it only if you say so.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 7860,
    base: Annotated[
        bool, typer.Option("--base", help="Also answer with the base model (a LoRA run).")
    ] = False,
    data: Annotated[
        Path | None, typer.Option(help="A .jsonl file the Label tab appends new messages records to.")
    ] = None,
) -> None:
    """A browser playground for the model and a page to write new training records (gradio)."""
    from glmtune.inference.web import web as run_web

    run_web(source, host=host, port=port, base=base, data=data)


@app.command(name="eval", epilog="Example: glmtune eval runs/demo --recipe recipes/demo.toml")
def evaluate(
    source: SourceArg,
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe whose data and eval sections to use; default: the run's own.")
    ] = None,
    set_: SetOpt = None,
    retention: Annotated[
        list[Path] | None,
        typer.Option(
            help="General questions (e.g. data/retention/general.jsonl): did the tuned model keep them?"
        ),
    ] = None,
) -> None:
    """Loss/perplexity and BLEU-4, ROUGE, exact match; base vs tuned side by side; knowledge retention."""
    from glmtune.inference.evaluate import evaluate_source

    evaluate_source(
        source,
        recipe=_recipe(recipe, set_) if recipe else None,
        overrides=set_ or [],
        retention=[str(path.resolve()) for path in retention or []],
    )


class Switch(str, Enum):
    true = "true"
    false = "false"


@app.command(
    epilog="Example: glmtune render ~/models/GLM-4.7-Flash data/train.jsonl --generation-prompt --enable-thinking false"
)
def render(
    source: Annotated[
        str | None,
        typer.Argument(
            help="A model folder (config + chat template are enough); omit with --family.", show_default=False
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Argument(help="A data file (any format glmtune reads).", show_default=False)
    ] = None,
    family: Annotated[
        str | None, typer.Option(help="Render in this family's format instead of a folder's.")
    ] = None,
    generation_prompt: Annotated[
        bool,
        typer.Option("--generation-prompt", help="Render each record as an inference prompt (no answer)."),
    ] = False,
    enable_thinking: Annotated[
        Switch | None, typer.Option(help="false: as the template renders with enable_thinking=false.")
    ] = None,
    ids: Annotated[
        bool, typer.Option("--ids", help="Also print token ids and mask (needs the folder's tokenizer).")
    ] = False,
) -> None:
    """Print each record as the family's template renders it: one JSON object per line, {"text", "trained"}."""
    from glmtune.checkpoints.load import load_tokenizer, resolve_model_path
    from glmtune.data.show import render_family, render_lines, render_target

    source, data = render_target(source, data, family, ids)
    folder = resolve_model_path(source, "MODEL_DIR", weights=False) if source else None
    record = render_family(folder, family)
    tokenizer = load_tokenizer(folder, False, record) if ids and folder else None
    thinking: Literal["template", "off"] = "off" if enable_thinking == Switch.false else "template"
    for line in render_lines(
        data, record, generation_prompt=generation_prompt, thinking=thinking, tokenizer=tokenizer
    ):
        term.out(line)


def main() -> None:
    for switch in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[switch] = (
            "1"  # glmtune reads local files only; a missing one must not become a hub request
        )
    try:
        code = app(standalone_mode=False)  # Typer's usage errors come here too, to be printed in one line
    except UsageError as exc:
        term.error(str(exc))
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        term.error("interrupted")
        sys.exit(130)
    except Exception as exc:
        if _is_click_error(exc):
            _usage_mistake(exc)
        _unexpected(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _is_click_error(exc: Exception) -> bool:
    # Typer raises click's exceptions from its vendored copy of click; both carry format_message and exit_code.
    return type(exc).__module__.endswith("click.exceptions") and hasattr(exc, "format_message")


def _usage_mistake(exc: Any) -> None:
    """Typer's own usage errors: the usage line and one error line, no box; no arguments at all shows the help."""
    context = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":
        term.info(exc.format_message())
    elif context is not None:
        term.info(context.get_usage())
        term.error(f"{exc.format_message()} (try '{context.command_path} --help')")
    else:
        term.error(exc.format_message())
    sys.exit(exc.exit_code)


def _unexpected(exc: Exception) -> None:
    """The net under every specific message: one line and the file holding the full traceback."""
    import traceback

    from glmtune.rundir import first_line, save_traceback

    text = "".join(traceback.format_exception(exc))
    where = save_traceback(text)
    if DEBUG["on"]:
        sys.stderr.write(text)
    term.error(
        f"unexpected {type(exc).__name__}: {first_line(exc)[:300]} — a glmtune bug; the full traceback is in "
        f"{where} (glmtune --debug prints it), please report it"
    )
    sys.exit(1)


if __name__ == "__main__":
    main()
