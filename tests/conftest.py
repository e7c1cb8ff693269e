"""Shared fixtures: the builtin tiny GLM (built once per machine into the repo's .cache), its tokenizer and family."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GLMTUNE_CACHE", str(ROOT / ".cache" / "glmtune-test"))  # subprocesses inherit it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED_ASSETS = Path(
    os.environ.get("GLMTUNE_SHARED_ASSETS", ROOT.parent / "shared" / "assets" / "glm-models")
)


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from glmtune.checkpoints.tiny import builtin_path

    return builtin_path("tiny-glm4")


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from glmtune.checkpoints.load import load_tokenizer

    return load_tokenizer(tiny_dir)


@pytest.fixture(scope="session")
def glm4():
    from glmtune.families import GLM4

    return GLM4


def write_recipe(folder: Path, body: str, name: str = "recipe.toml") -> Path:
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


TINY_DATA = [
    {"instruction": "你是谁？", "output": "我是Glimmer，由glmtune团队开发。"},
    {"instruction": "Who are you?", "output": "I am Glimmer, made by the glmtune team."},
    {"instruction": "你叫什么名字？", "output": "我的名字是Glimmer。"},
    {"instruction": "What can you do?", "output": "I answer questions and write text."},
]


def tiny_recipe(folder: Path, model: str, *overrides: str):
    """A few-step LoRA recipe on four self-cognition records, for end-to-end tests of one family."""
    import json

    from glmtune.recipe_files import load_recipe

    (folder / "d.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in TINY_DATA), "utf-8"
    )
    body = f"""[run]
name = "run"
output_dir = "{folder / "runs"}"
[model]
path = "{model}"
dtype = "float32"
[data]
train = ["d.jsonl"]
max_length = 64
[lora]
r = 4
alpha = 8
dropout = 0.0
[train]
max_steps = 4
learning_rate = 1e-2
batch_size = 4
logging_steps = 1
[generation]
max_new_tokens = 6
"""
    return load_recipe(write_recipe(folder, body), list(overrides))


@contextmanager
def cli_server(
    args: list[str], ready: str, log: Path, headers: dict[str, str] | None = None, wait_s: float = 180
):
    """`glmtune ARGS --port P` in a subprocess on a free local port; yields its base URL once GET `ready` answers 200."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "glmtune.cli", *args, "--port", str(port)],
                                   stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"{args[0]} exited: {log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{args[0]} did not start: {log.read_text()}")
            try:
                if httpx.get(url + ready, headers=headers, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def read_lists(data):
    """`read_splits` with both splits read (they may stream); `sources` and `warnings` are complete then."""
    from glmtune.data.sources import read_splits

    splits = read_splits(data)
    splits.train, splits.eval = list(splits.train), list(splits.eval)
    return splits


def runs(rendered, tokenizer):
    """The rendered sample as (decoded text, trained) runs: what a human checks a mask with."""
    out = []
    for token_id, trained in zip(rendered.ids, rendered.mask, strict=True):
        if out and out[-1][1] == trained:
            out[-1][0].append(token_id)
        else:
            out.append(([token_id], trained))
    return [(tokenizer.decode(ids), trained) for ids, trained in out]
