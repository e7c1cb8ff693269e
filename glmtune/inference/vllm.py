"""`glmtune serve --engine vllm`: hand an exported folder to vLLM's own OpenAI server with the family's parsers.

vLLM loads the export itself (safetensors + config + tokenizer + chat template), so a run directory must be exported
first. Where vLLM or a GPU is missing, the exact command is printed instead of guessed at.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
from pathlib import Path

from glmtune.errors import UsageError
from glmtune.families import Family, detect_family
from glmtune.rundir import is_run_dir


def vllm_command(
    folder: Path, family: Family, *, host: str, port: int, api_key: str | None, model_name: str | None
) -> list[str]:
    command = ["vllm", "serve", str(folder), "--host", host, "--port", str(port)]
    command += ["--served-model-name", model_name or folder.resolve().name]
    if family.vllm_tool_parser:
        command += ["--enable-auto-tool-choice", "--tool-call-parser", family.vllm_tool_parser]
    if family.vllm_reasoning_parser:
        command += ["--reasoning-parser", family.vllm_reasoning_parser]
    if api_key:
        command += ["--api-key", api_key]
    return command


def run_vllm(source: Path, *, host: str, port: int, api_key: str | None, model_name: str | None) -> None:
    if is_run_dir(source):
        raise UsageError(
            f"{source}: vLLM serves exported models; run glmtune export {source} --out DIR, "
            "then glmtune serve DIR --engine vllm"
        )
    if not (source / "config.json").is_file():
        raise UsageError(f"{source}: not a model folder (no config.json)")
    command = vllm_command(
        source, detect_family(source), host=host, port=port, api_key=api_key, model_name=model_name
    )
    missing = _missing_requirement()
    if missing:
        raise UsageError(f"{missing}; on a machine with vLLM and a GPU run: {shlex.join(command)}")
    if shutil.which("vllm"):
        os.execvp("vllm", command)
    # vllm importable but its script not on PATH: the same server through its module entry point
    server = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(source),
        *command[3:],
    ]
    os.execvp(sys.executable, server)


def _missing_requirement() -> str:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed here (pip install vllm)"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and none is visible"
    return ""
