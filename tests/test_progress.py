"""What `glmtune train` writes when stderr is a pipe (a log file, CI): whole lines, one progress line per logging
step as the run goes, and nothing from third-party libraries."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import tiny_recipe

PROGRESS = re.compile(
    r"^train step (\d+)/6 · epoch [\d.]+ · loss [\d.]+ · lr [\d.e+-]+ · [\d,]+ tok/s · \d+s$"
)


@pytest.fixture(scope="module")
def train_stderr(tmp_path_factory, tiny_dir) -> list[str]:
    folder = tmp_path_factory.mktemp("progress")
    tiny_recipe(folder, str(tiny_dir))  # writes recipe.toml and its data
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    overrides = ["--set", "train.max_steps=6", "--set", "train.logging_steps=2"]
    command = [sys.executable, "-m", "glmtune.cli", "train", str(folder / "recipe.toml"), *overrides]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_one_plain_progress_line_every_logging_step(train_stderr):
    steps = [int(match[1]) for line in train_stderr if (match := PROGRESS.match(line))]
    assert steps == [2, 4, 6], train_stderr


def test_lines_are_not_wrapped_at_80_columns(train_stderr):
    lora = [line for line in train_stderr if line.startswith("› LoRA")]
    assert len(lora) == 1 and "parameters train" in lora[0], train_stderr
    assert any(len(line) > 80 for line in train_stderr)


def test_no_third_party_noise(train_stderr):
    noise = ("gemm_4bit_forward", "kernels-community", "bitsandbytes", "Warning:", "warnings.warn")
    assert [line for line in train_stderr if any(word in line for word in noise)] == []
