"""Run directories that describe themselves: the resolved recipe, the family, the base model and library versions.

`export`, `chat` and `eval` take a run directory and need nothing else. Layout:
    recipe.toml   the resolved recipe (extends and --set applied)
    run.json      family, base model path and fingerprint, method, versions, status
    data/         the prepared dataset and its fingerprint and stats
    adapter/      LoRA weights (method lora)   |   model/  full weights (method full)
    tokenizer/    the tokenizer used in training
    metrics.jsonl one JSON object per logged step; eval.json after `glmtune eval`

Outputs never replace what glmtune did not write: `claim_output` refuses, before any work, a target that is a file,
lies inside a run directory or model folder, or holds something that is not a glmtune output of the same kind
(glmtune's own are replaced only with --overwrite). Every folder is written beside its target under a name holding
the writer's pid and renamed into place; the staging leftovers of dead processes are removed by the next writer.
A failed `train` leaves nothing new behind, unless the run has a complete checkpoint: then the run directory stays,
marked `failed` with the reason, so `--resume` can continue from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import tomli_w

from glmtune.errors import UsageError
from glmtune.recipe import Recipe

RUN_FILE = "run.json"
# {"kind": "export"} in model folders glmtune wrote (run directories have run.json)
OUTPUT_MARK = ".glmtune-output"
STAGING = re.compile(r"^\.(?P<name>.+)\.(tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
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


# The run directory this command works on, where an unexpected error's traceback is saved.
ACTIVE: dict[str, Path] = {}


def note_run_dir(path: Path) -> None:
    ACTIVE["run"] = path


def save_traceback(text: str) -> Path:
    """Write a full traceback into the active run directory, or under the cache when there is none."""
    folder = ACTIVE.get("run")
    if folder is None or not folder.is_dir():
        cache = os.environ.get("GLMTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "glmtune")
        folder = Path(cache) / "errors"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = folder / f"glmtune-error-{stamp}-{os.getpid()}.txt"
    atomic_write_text(path, text)
    return path


def run_dir_of(recipe: Recipe) -> Path:
    return Path(recipe.run.output_dir) / recipe.run.name


def is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file()


def output_kind(path: Path) -> str | None:
    """What glmtune wrote this folder as ("run", "export", "convert"), or None when glmtune did not write it."""
    if is_run_dir(path) or (path / "data" / "fingerprint.txt").is_file():
        return "run"  # a trained run, or one `glmtune prepare` started
    try:
        kind = json.loads((path / OUTPUT_MARK).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def claim_output(target: Path, kind: str, *, overwrite: bool = False, what: str = "--out") -> Path:
    """Check, before any work, that writing `target` (absolute path returned) destroys nothing glmtune did not
    write: a file, a folder inside a run directory or model folder, or a folder of another kind is refused;
    an earlier glmtune output of the same kind is replaced only with `overwrite`."""
    target = Path(os.path.abspath(target))
    if target.exists() and not target.is_dir():
        raise UsageError(f"{what} {target}: is a file, not a folder; give a new folder path")
    for parent in target.parents:
        if is_run_dir(parent) or (parent / "config.json").is_file():
            holder = "run directory" if is_run_dir(parent) else "model folder"
            raise UsageError(f"{what} {target}: inside the {holder} {parent}; give a folder outside it")
    if not target.is_dir() or not any(target.iterdir()):
        return target
    found = output_kind(target)
    if found is None:
        raise UsageError(
            f"{what} {target}: the folder exists and glmtune did not write it, so it is never replaced; "
            "give a new folder path, or move that folder away first"
        )
    if found != kind:
        raise UsageError(
            f"{what} {target}: holds a glmtune {found} output, not a {kind} output; give another path"
        )
    if not overwrite:
        raise UsageError(f"{what} {target}: holds an earlier glmtune {kind}; add --overwrite to replace it")
    return target


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


def claim_run_dir(
    run_dir: Path, *, resume: bool = False, overwrite: bool = False, data_only: bool = False
) -> None:
    """`train` (or, `data_only`, `prepare`) writes here: never into a folder glmtune did not write, and `train`
    never over an earlier run unasked."""
    note_run_dir(run_dir)
    if data_only:
        claim_output(run_dir, "run", overwrite=True, what="run directory")
        return
    if resume:
        return  # continuing the run that is there (check_resumable checks it is one)
    claim_output(run_dir, "run", overwrite=True, what="run directory")
    if is_run_dir(run_dir) and not overwrite:
        raise UsageError(
            f"run directory {run_dir}: holds an earlier run; --resume continues it, --overwrite replaces it, "
            "or set another run.name"
        )


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(path)
    fd, temporary = tempfile.mkstemp(prefix=_staging_prefix(path, "tmp"), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _staging_prefix(target: Path, tag: str) -> str:
    return f".{target.name}.{tag}-{os.getpid()}-"


def _aside(target: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=_staging_prefix(target, "old"), dir=target.parent)) / target.name


def clean_stale_staging(target: Path) -> None:
    """Remove what killed writers of `target` left beside it (their pid is in the name and no longer runs)."""
    for leftover in target.parent.glob(f".{glob_escape(target.name)}.*-*"):
        match = STAGING.match(leftover.name)
        if match and match["name"] == target.name and not _alive(int(match["pid"])):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def replace_dir(staging: Path, target: Path) -> None:
    """Put a fully written folder in place of `target` (the old one is removed only after the swap)."""
    backup = _aside(target) if target.exists() else None
    if backup is not None:
        target.rename(backup)
    staging.rename(target)
    if backup is not None:
        shutil.rmtree(backup.parent, ignore_errors=True)


@contextmanager
def staged_dir(target: Path, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` (marked as a glmtune output of
    `kind` when given), on failure it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target, "tmp"), dir=target.parent))
    try:
        yield staging
        if kind is not None:
            (staging / OUTPUT_MARK).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, target)


@contextmanager
def run_attempt(run_dir: Path, *, replace: bool, keep_if: Callable[[], bool]) -> Iterator[None]:
    """Around a `train`: with `replace` an earlier run is moved aside and removed only once this one succeeds.
    On failure, a run worth keeping (`keep_if`: it has a complete checkpoint) is marked failed with the reason;
    otherwise every entry this attempt added is removed and the earlier run put back."""
    clean_stale_staging(run_dir)
    aside = _aside(run_dir) if replace and is_run_dir(run_dir) else None
    if aside is not None:
        run_dir.rename(aside)
    before = set(os.listdir(run_dir)) if run_dir.is_dir() else None
    created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # e.g. runs/ itself
    try:
        yield
    except BaseException as exc:
        if run_dir.is_dir() and is_run_dir(run_dir) and keep_if():
            update_run(run_dir, status="failed", error=first_line(exc))
        else:
            _remove_new_entries(run_dir, before)
            for folder in created[1:]:
                with suppress(OSError):  # no longer empty: someone else writes there now
                    folder.rmdir()
            if aside is not None:
                aside.rename(run_dir)
        raise
    finally:
        if aside is not None:  # the earlier run, unless it was put back
            shutil.rmtree(aside.parent, ignore_errors=True)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _remove_new_entries(folder: Path, before: set[str] | None) -> None:
    if not folder.is_dir():
        return
    if before is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for name in set(os.listdir(folder)) - before:
        entry = folder / name
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def run_recipe(path: Path) -> Recipe:
    """The resolved recipe a run was trained with."""
    from glmtune.recipe_files import load_recipe

    return load_recipe(path / "recipe.toml")
