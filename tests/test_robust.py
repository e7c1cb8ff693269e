"""Never lose a user's work: each destructive case of issue 9 refused in one line, resume and divergence kept safe,
offline for real, pickles refused. One tiny run (trained once for the module) is the subject of most tests; tests
that damage it put it back."""

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import tiny_recipe
from test_cli import assert_usage_error, glmtune

from glmtune.training.callbacks import COMPLETE_MARKER

STEPS = ["--set", "train.max_steps=4", "--set", "train.save_steps=2", "--set", "train.save_total_limit=1"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and mtime: 'nothing changed' means equal snapshots."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_dir()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robust")
    tiny_recipe(folder, "builtin:tiny-glm4")
    result = glmtune("train", folder / "recipe.toml", *STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, folder / "runs" / "run"


@contextmanager
def moved_aside(path: Path):
    backup = path.with_name(path.name + ".kept")
    path.rename(backup)
    try:
        yield
    finally:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        backup.rename(path)


def test_export_refuses_an_unrelated_folder(trained, tmp_path):
    _, run = trained
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert_usage_error(glmtune("export", run, "--out", docs), "mydocs", "glmtune did not write it")
    assert_usage_error(glmtune("export", run, "--out", docs, "--overwrite"), "never replaced")
    assert snapshot(tmp_path) == before and (docs / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["run", "run/adapter", "run/new"], ids=["the-run", "its-adapter", "inside"])
def test_export_refuses_the_run_directory_and_anything_in_it(trained, where):
    folder, run = trained
    before = snapshot(folder)
    target = run.parent / where
    assert_usage_error(glmtune("export", run, "--out", target, "--overwrite"), str(target))
    assert snapshot(folder) == before


def test_export_refuses_a_file_and_the_working_folder(trained, tmp_path):
    _, run = trained
    (tmp_path / "existing.txt").write_text("keep me")
    before = snapshot(tmp_path)
    assert_usage_error(glmtune("export", run, "--out", tmp_path / "existing.txt"), "is a file")
    assert_usage_error(glmtune("export", run, "--out", ".", cwd=tmp_path), "glmtune did not write it")
    assert snapshot(tmp_path) == before  # no hidden .existing.txt.old, no staging folder


def test_export_replaces_its_own_output_only_with_overwrite(trained, tmp_path):
    _, run = trained
    out = tmp_path / "export"
    assert glmtune("export", run, "--out", out).returncode == 0
    assert_usage_error(glmtune("export", run, "--out", out), "--overwrite")
    result = glmtune("export", run, "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_prepare_refuses_a_project_folder_as_run_directory(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    tiny_recipe(project, "builtin:tiny-glm4")
    before = snapshot(tmp_path)
    result = glmtune("prepare", project / "recipe.toml", "--set", f"run.output_dir={tmp_path}",
                     "--set", "run.name=project")  # fmt: skip
    assert_usage_error(result, "project", "glmtune did not write it")
    assert snapshot(tmp_path) == before  # mine.jsonl (here d.jsonl) and everything else untouched
    for name in ["..", "../x", "/abs", "x" * 300]:
        result = glmtune("prepare", project / "recipe.toml", "--set", f"run.name={name}")
        assert_usage_error(result, "run.name: must be a plain folder name")


def test_train_refuses_to_replace_a_run_unasked(trained):
    folder, run = trained
    before = snapshot(folder)
    assert_usage_error(glmtune("train", folder / "recipe.toml", *STEPS), "--resume", "--overwrite")
    assert snapshot(folder) == before


def test_failed_train_leaves_nothing_behind(tmp_path):
    """The model or the Trainer failing after the data was prepared and run.json written."""
    project = tmp_path / "project"
    project.mkdir()
    tiny_recipe(project, "builtin:tiny-glm4")
    before = snapshot(project)
    script = (
        "import sys\nfrom glmtune.training import train\n"
        "def broken(*args, **kwargs):\n    raise RuntimeError('the Trainer broke')\n"
        "train.train_here = broken\nfrom glmtune.cli import main\n"
        f"sys.argv = ['glmtune', 'train', {str(project / 'recipe.toml')!r}]\nmain()\n"
    )
    env = os.environ | {"GLMTUNE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 1 and "the Trainer broke" in result.stderr, result.stderr[-2000:]
    assert snapshot(project) == before  # no runs/run with recipe.toml, run.json, data/


def test_kill_between_checkpoint_and_marker_keeps_the_previous_one(tmp_path):
    """save_total_limit = 1: killed after checkpoint-4's files, before its marker; checkpoint-2 must still be there."""
    tiny_recipe(tmp_path, "builtin:tiny-glm4")
    args = [str(tmp_path / "recipe.toml"), *STEPS, "--set", "train.max_steps=6"]
    script = (
        "import os, signal, sys\n"
        "from glmtune.training import callbacks\n"
        "original = callbacks.CheckpointMarker.on_save\n"
        "def on_save(self, args, state, control, **kw):\n"
        "    if state.global_step == 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return original(self, args, state, control, **kw)\n"
        "callbacks.CheckpointMarker.on_save = on_save\n"
        "from glmtune.cli import main\n"
        f"sys.argv = ['glmtune', 'train', *{args!r}]\n"
        "main()\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = tmp_path / "runs" / "run" / "checkpoints"
    assert (checkpoints / "checkpoint-2" / COMPLETE_MARKER).is_file()
    assert not (checkpoints / "checkpoint-4" / COMPLETE_MARKER).exists()
    resumed = glmtune("train", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint-2" in " ".join(resumed.stderr.split())
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-6"]  # rotated once 6 was complete


def test_resume_refuses_changed_data(trained):
    folder, run = trained
    data = folder / "d.jsonl"
    original = data.read_bytes()
    before = snapshot(run)
    try:
        data.write_bytes(original + json.dumps({"instruction": "new", "output": "data"}).encode() + b"\n")
        result = glmtune("train", folder / "recipe.toml", *STEPS, "--resume")
        assert_usage_error(result, "the training data changed since this run started")
    finally:
        data.write_bytes(original)
    assert snapshot(run) == before


def test_nan_at_a_huge_learning_rate_stops_the_run(tmp_path):
    tiny_recipe(tmp_path, "builtin:tiny-glm4")
    result = glmtune("train", tmp_path / "recipe.toml", "--set", "train.learning_rate=1e30",
                     "--set", "train.max_steps=6", "--set", "train.save_steps=1")  # fmt: skip
    assert_usage_error(result, "at step", "lower train.learning_rate")
    assert "run saved" not in result.stderr
    run = tmp_path / "runs" / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "at step" in info["error"]
    assert not (run / "adapter").exists()
    complete = [p for p in (run / "checkpoints").iterdir() if (p / COMPLETE_MARKER).is_file()]
    assert complete  # the last good checkpoint stays, for --resume or a look
    assert_usage_error(glmtune("chat", run, "--query", "hi"), "training failed")


NO_NETWORK = (
    "import socket, sys\n"
    "def refuse(*args, **kwargs):\n"
    "    sys.stderr.write('NETWORK ATTEMPT\\n'); raise SystemExit(99)\n"
    "socket.socket.connect = refuse\n"
    "socket.create_connection = refuse\n"
    "socket.getaddrinfo = refuse\n"
    "from glmtune.cli import main\n"
    "sys.argv = ['glmtune', *sys.argv[1:]]\n"
    "main()\n"
)


def offline(*args):
    return subprocess.run([sys.executable, "-c", NO_NETWORK, *map(str, args)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_missing_tokenizer_is_one_line_and_no_network(trained):
    _, run = trained
    with moved_aside(run / "tokenizer"):
        result = offline("chat", run, "--query", "hi")
    assert "NETWORK ATTEMPT" not in result.stderr
    assert_usage_error(result, str(run / "tokenizer"), "missing")


def test_missing_tokenizer_file_in_a_model_folder_makes_no_request(tmp_path, tiny_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / "tokenizer.json").unlink()
    tiny_recipe(tmp_path, str(model))
    result = offline("prepare", tmp_path / "recipe.toml")
    assert "NETWORK ATTEMPT" not in result.stderr
    assert_usage_error(result, str(model), "no tokenizer file")
    assert not (tmp_path / "runs").exists()


def test_the_process_sets_the_hub_offline_switches():
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    probe = (
        "import os, sys\nfrom glmtune.cli import app, main\n@app.command('probe')\ndef probe():\n"
        "    print(os.environ['HF_HUB_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'])\n"
        "sys.argv = ['glmtune', 'probe']\nmain()\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert result.stdout.split() == ["1", "1"], result.stderr


def test_pickle_only_adapter_is_refused(trained):
    import torch
    from safetensors.torch import load_file

    _, run = trained
    weights = run / "adapter" / "adapter_model.safetensors"
    with moved_aside(weights):
        torch.save(
            load_file(weights.with_name(weights.name + ".kept")), run / "adapter" / "adapter_model.bin"
        )
        try:
            result = glmtune("chat", run, "--query", "hi")
        finally:
            (run / "adapter" / "adapter_model.bin").unlink()
    assert_usage_error(result, "adapter_model.bin", "model.allow_pickle = true")


def test_trust_switches_come_from_the_recipe_not_run_json(trained, monkeypatch):
    from glmtune.checkpoints import load

    _, run = trained
    info_path = run / "run.json"
    original = info_path.read_text()
    seen = {}

    def fake_load_model(folder, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    try:
        info_path.write_text(
            json.dumps(json.loads(original) | {"trust_remote_code": True, "allow_pickle": True})
        )
        monkeypatch.setattr(load, "load_model", fake_load_model)
        with pytest.raises(SystemExit):
            load.load_base_with_adapter(json.loads(info_path.read_text()), run, dtype="float32", merge=False)
    finally:
        info_path.write_text(original)
    assert seen["trust_remote_code"] is False and seen["allow_pickle"] is False


def test_torn_metrics_line_on_resume(trained):
    from glmtune.training.callbacks import _entries

    _, run = trained
    text = (run / "metrics.jsonl").read_text()
    entries = _entries(text + '{"step": 5, "lo')
    assert entries == _entries(text) and entries and all("step" in e for e in entries)


def test_an_unexpected_error_is_one_line_and_a_traceback_file(tmp_path):
    probe = (
        "import sys\nfrom glmtune.cli import app, main\n@app.command('boom')\ndef boom():\n"
        "    raise RuntimeError('kaput')\n"
        "sys.argv = ['glmtune', *sys.argv[1:], 'boom']\nmain()\n"
    )
    env = os.environ | {"GLMTUNE_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unexpected RuntimeError: kaput" in lines[0]
    saved = list((tmp_path / "errors").iterdir())
    assert len(saved) == 1 and "Traceback" in saved[0].read_text() and str(saved[0]) in lines[0]
    debug = subprocess.run([sys.executable, "-c", probe, "--debug"], capture_output=True, text=True, env=env)
    assert "Traceback" in debug.stderr and "RuntimeError: kaput" in debug.stderr


def test_typer_usage_errors_stay_short():
    result = glmtune("train")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 2
    assert lines[0].startswith("Usage:") and lines[1].startswith("error: Missing argument")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--max-new-tokens", "0"], "--max-new-tokens"), (["--temperature", "-1"], "--temperature")],
)
def test_chat_refuses_settings_generate_cannot_use(trained, args, fragment):
    _, run = trained
    assert_usage_error(glmtune("chat", run, "--query", "hi", *args), fragment)


def test_chat_at_temperature_zero_is_greedy(trained):
    _, run = trained
    greedy = glmtune("chat", run, "--query", "hi")
    zero = glmtune("chat", run, "--query", "hi", "--temperature", "0")
    assert zero.returncode == 0, zero.stderr[-2000:]
    assert zero.stdout == greedy.stdout


def test_dead_writers_staging_is_cleaned(tmp_path):
    from glmtune.rundir import staged_dir

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    leftover = tmp_path / f".out.tmp-{dead.stdout.strip()}-abc123"
    leftover.mkdir()
    (leftover / "model.safetensors").write_text("half")
    alive = tmp_path / f".out.tmp-{os.getpid()}-def456"
    alive.mkdir()
    with staged_dir(tmp_path / "out", kind="export") as staging:
        (staging / "x").write_text("1")
    assert not leftover.exists() and alive.exists()  # a live writer's staging stays
    assert (tmp_path / "out" / "x").read_text() == "1"
