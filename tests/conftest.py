"""Shared fixtures: the builtin tiny GLM (built once per machine into the repo's .cache), its tokenizer and family."""

from __future__ import annotations

import os
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
    from glmtune.tiny import builtin_path

    return builtin_path("tiny-glm4")


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from glmtune.modeling import load_tokenizer

    return load_tokenizer(tiny_dir)


@pytest.fixture(scope="session")
def glm4():
    from glmtune.families import GLM4

    return GLM4


def write_recipe(folder: Path, body: str, name: str = "recipe.toml") -> Path:
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path
