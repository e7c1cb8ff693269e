"""Run directories that describe themselves: the resolved recipe, the family, the base model and library versions.

`export`, `chat` and `eval` take a run directory and need nothing else. Layout:
    recipe.toml   the resolved recipe (extends and --set applied)
    run.json      family, base model path and fingerprint, method, versions, status
    data/         the prepared dataset and its fingerprint and stats
    adapter/      LoRA weights (method lora)   |   model/  full weights (method full)
    tokenizer/    the tokenizer used in training
    metrics.jsonl one JSON object per logged step; eval.json after `glmtune eval`
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import tomli_w

from glmtune.errors import UsageError
from glmtune.recipe import Recipe

RUN_FILE = "run.json"
LIBRARIES = (
    "glmtune",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "tokenizers",
    "deepspeed",
    "bitsandbytes",
)


def run_dir_of(recipe: Recipe) -> Path:
    return Path(recipe.run.output_dir) / recipe.run.name


def is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file()


def read_run(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(
            f"{path / RUN_FILE}: unreadable run description ({exc}); is this a glmtune run directory?"
        ) from None


def write_run(path: Path, info: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / RUN_FILE, json.dumps(info, indent=2, ensure_ascii=False) + "\n")


def update_run(path: Path, **changes: Any) -> None:
    info = read_run(path)
    info.update(changes)
    write_run(path, info)


def write_recipe(path: Path, recipe: Recipe) -> None:
    atomic_write_text(
        path / "recipe.toml",
        "# Resolved recipe of this run (extends and --set applied).\n" + tomli_w.dumps(recipe.to_dict()),
    )


def new_run_info(recipe: Recipe, family: str, base_model: Path) -> dict[str, Any]:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "family": family,
        "base_model": {"path": str(base_model.resolve()), "fingerprint": model_fingerprint(base_model)},
        "method": recipe.method.kind,
        "quantize": recipe.launch.quantize,
        "versions": library_versions(),
        "status": "created",
    }


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def model_fingerprint(folder: Path) -> str:
    """Cheap identity of a checkpoint: config plus names and sizes of its weight files (contents are GBs)."""
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.name == "config.json":
            digest.update(file.read_bytes())
        elif file.suffix in (".safetensors", ".bin"):
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def replace_dir(staging: Path, target: Path) -> None:
    """Put a fully written folder in place of `target` (the old one is removed only after the swap)."""
    backup = target.with_name(f".{target.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    if target.exists():
        target.rename(backup)
    staging.rename(target)
    shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target`, on failure it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, target)


def run_recipe(path: Path) -> Recipe:
    """The resolved recipe a run was trained with."""
    from glmtune.recipe import load_recipe

    return load_recipe(path / "recipe.toml")
