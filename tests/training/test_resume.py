"""A run killed with SIGKILL and resumed ends exactly like an uninterrupted one (CPU: bit-exact)."""

import json
import signal
import subprocess
import sys
import time

import torch
from conftest import ROOT
from safetensors.torch import load_file
from test_cli import glmtune

from glmtune.training.callbacks import COMPLETE_MARKER

ARGS = ["--set", "train.max_steps=8", "--set", "train.save_steps=2", "--set", "train.logging_steps=1",
        "--set", "train.save_total_limit=10", "--set", "lora.dropout=0.1"]  # fmt: skip


def losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(entry["step"], entry["loss"]) for entry in map(json.loads, lines) if "loss" in entry]


def test_killed_run_resumes_bit_exact(tmp_path):
    recipe = ROOT / "recipes" / "demo.toml"
    straight = glmtune("train", recipe, "--set", f"run.output_dir={tmp_path / 'a'}", *ARGS)
    assert straight.returncode == 0, straight.stderr[-3000:]

    command = [
        sys.executable,
        "-m",
        "glmtune.cli",
        "train",
        str(recipe),
        "--set",
        f"run.output_dir={tmp_path / 'b'}",
        *ARGS,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "b" / "demo" / "checkpoints" / "checkpoint-4" / COMPLETE_MARKER
    deadline = time.time() + 300
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.exists()
    torn = tmp_path / "b" / "demo" / "checkpoints" / "checkpoint-6"
    torn.mkdir(exist_ok=True)  # as if the kill had hit while checkpoint-6 was being written
    (torn / COMPLETE_MARKER).unlink(missing_ok=True)

    resumed = glmtune("train", recipe, "--set", f"run.output_dir={tmp_path / 'b'}", "--resume", *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ignoring incomplete checkpoint checkpoint-6" in " ".join(resumed.stderr.split())
    a, b = tmp_path / "a" / "demo", tmp_path / "b" / "demo"
    assert losses(a) == losses(b) and len(losses(a)) == 8
    first = load_file(a / "adapter" / "adapter_model.safetensors")
    second = load_file(b / "adapter" / "adapter_model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
