"""Slow tier (`make test-slow`): `make demo` itself, run as the README tells a new user to, in a scratch copy."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_make_demo_prepares_trains_evaluates_exports_and_chats(tmp_path):
    for part in ("Makefile", "recipes", "data"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, tmp_path / part)
    venv = Path(sys.executable).parent.parent  # the Makefile runs $(VENV)/bin/glmtune
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    }
    result = subprocess.run(
        ["make", "demo", f"VENV={venv}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Glimmer" in result.stdout.splitlines()[-1]  # the exported model's answer to 你是谁？ comes last
    scores = json.loads((tmp_path / "runs" / "demo" / "eval.json").read_text())["results"]
    assert scores["tuned"]["exact_match"] >= 90.0 > 10.0 > scores["base"]["exact_match"]
    assert (tmp_path / "runs" / "demo-export" / "model.safetensors").is_file()
