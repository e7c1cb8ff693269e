"""Completeness checks of model folders, run directories and DeepSpeed configs, before any work starts.

A damaged input (a truncated safetensors file, a config that does not fit the weights, a run.json holding `[]`, an
adapter folder with only a pickle, a tokenizer folder that is gone) ends in one line naming the file, instead of a
library traceback minutes later or a request to the model hub. Only headers and small JSON files are read: checking
a 9B model costs milliseconds.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "ice_text.model", "vocab.json", "tokenizer.tiktoken")
JSON_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "adapter_config.json",
)
HEADER_LIMIT = 100 * 2**20  # safetensors caps its JSON header at 100 MB
LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


@contextmanager
def loading(folder: Path, what: str) -> Iterator[None]:
    """Around a library load of checked files: damage the checks cannot see (a tokenizer.json of the wrong shape,
    weights that do not fit the config) is still one line naming the folder, not the library's traceback."""
    try:
        yield
    except UsageError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"{folder}: the {what} does not load ({type(exc).__name__}: {reason})") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; anything else is a one-line error naming the file."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def check_model_folder(folder: Path, tokenizer: bool = True) -> None:
    """config.json, the tokenizer files (unless kept apart, as a run directory keeps them) and the weights' headers
    are there, readable and agree with each other."""
    config = read_json_object(folder / "config.json")
    if not isinstance(config.get("model_type"), str):
        raise UsageError(f"{folder / 'config.json'}: no model_type; this is not a transformers model config")
    if tokenizer:
        check_tokenizer_folder(folder)
    shapes = _weight_shapes(folder)
    if shapes:
        _check_config_fits(folder / "config.json", config, shapes)


def check_tokenizer_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise UsageError(f"{folder}: the tokenizer folder is missing; nothing is downloaded in its place")
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        raise UsageError(
            f"{folder}: no tokenizer file ({', '.join(TOKENIZER_FILES)}); copy the model's tokenizer here"
        )
    for name in present:
        if (folder / name).stat().st_size == 0:
            raise UsageError(f"{folder / name}: empty tokenizer file")
    for name in JSON_FILES:
        if (folder / name).is_file():
            read_json_object(folder / name)


def _weight_shapes(folder: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from every safetensors header; the index, if any, must point only at what exists."""
    files = sorted(folder.glob("*.safetensors"))
    shapes: dict[str, list[int]] = {}
    for file in files:
        shapes |= safetensors_shapes(file)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UsageError(f"{index}: no weight_map object")
        for name, file_name in weight_map.items():
            if not (folder / str(file_name)).is_file():
                raise UsageError(f"{index}: {name} is in {file_name}, which is missing")
            if name not in shapes:
                raise UsageError(
                    f"{index}: {name} is not in {file_name}; the shard is damaged or from another model"
                )
    elif not files and not any(folder.glob("*.bin")):
        raise UsageError(f"{folder}: no weight files (*.safetensors or *.bin)")
    return shapes


def safetensors_shapes(file: Path) -> dict[str, list[int]]:
    """Read a safetensors header (8-byte length, JSON) and check the data it describes is all in the file."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(HEADER_LIMIT, size - 8):
            raise UsageError(f"{file}: not a safetensors file, or truncated ({size} bytes)")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise UsageError(f"{file}: damaged safetensors header") from None
    if not isinstance(header, dict):
        raise UsageError(f"{file}: damaged safetensors header")
    header.pop("__metadata__", None)
    shapes, end = {}, 0
    for name, entry in header.items():
        try:
            shapes[name] = [int(d) for d in entry["shape"]]
            end = max(end, int(entry["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise UsageError(f"{file}: damaged safetensors header entry {name!r}") from None
    if end > size - 8 - length:
        raise UsageError(f"{file}: truncated ({size} bytes, the header describes {end + 8 + length})")
    return shapes


def _check_config_fits(config_path: Path, config: dict[str, Any], shapes: dict[str, list[int]]) -> None:
    hidden = config.get("hidden_size")
    layers = config.get("num_hidden_layers", config.get("num_layers"))
    for name, shape in shapes.items():
        embedding = "embed" in name and name.endswith("weight") and len(shape) == 2
        if embedding and isinstance(hidden, int) and shape[1] != hidden:
            raise UsageError(
                f"{config_path}: hidden_size {hidden} does not fit the weights ({name} is {shape}); "
                "the config belongs to another model"
            )
    found = {int(m.group(1)) for m in map(LAYER_INDEX.search, shapes) if m}
    extra = (
        config.get("num_nextn_predict_layers") or 0
    )  # GLM-4.5's multi-token-prediction layers follow the rest
    if isinstance(layers, int) and found and not layers <= max(found) + 1 <= layers + int(extra):
        raise UsageError(
            f"{config_path}: {layers} layers in the config, {max(found) + 1} in the weights; "
            "the config belongs to another model"
        )


def trained_run(run_dir: Path) -> dict[str, Any]:
    """run.json of a run that finished training, with its tokenizer and weights checked; else a one-line reason."""
    from glmtune.families import get_family
    from glmtune.rundir import RUN_FILE, note_run_dir, run_recipe

    note_run_dir(run_dir)
    run = read_json_object(run_dir / RUN_FILE)
    for key, kind in (("family", str), ("status", str), ("base_model", dict)):
        if not isinstance(run.get(key), kind):
            raise UsageError(
                f"{run_dir / RUN_FILE}: no {key!r} ({kind.__name__}); this run description is damaged"
            )
    if not isinstance(run["base_model"].get("path"), str):
        raise UsageError(f"{run_dir / RUN_FILE}: base_model has no path; this run description is damaged")
    get_family(run["family"])
    if run["status"] == "failed":
        raise UsageError(
            f"{run_dir}: training failed ({run.get('error', 'no reason recorded')}); train it again"
        )
    if run["status"] != "complete" or run.get("weights") not in ("adapter", "model"):
        raise UsageError(
            f"{run_dir}: training has not completed (status {run['status']!r}); finish it with glmtune train --resume"
        )
    recipe = run_recipe(run_dir)
    check_tokenizer_folder(run_dir / "tokenizer")
    if run["weights"] == "model":
        check_model_folder(run_dir / "model", tokenizer=False)  # the run's tokenizer/ was checked above
    else:
        check_adapter(run_dir / "adapter", allow_pickle=recipe.model.allow_pickle)
    return run


def check_adapter(folder: Path, allow_pickle: bool) -> None:
    """A PEFT adapter folder: its config, and safetensors weights (peft's fallback to a pickle is refused)."""
    read_json_object(folder / "adapter_config.json")
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        safetensors_shapes(weights)
    elif not (folder / "adapter_model.bin").is_file():
        raise UsageError(f"{weights}: missing; the adapter is incomplete, train the run again")
    elif not allow_pickle:
        raise UsageError(
            f"{folder / 'adapter_model.bin'}: a pickled adapter loads only with model.allow_pickle = true in the "
            "run's recipe.toml (only for files you trust)"
        )


def check_deepspeed_json(recipe) -> None:
    """The recipe's own DeepSpeed JSON has the shape DeepSpeed reads (checked before --dry-run prints a plan)."""
    launch = recipe.launch
    if launch.strategy != "deepspeed" or not launch.zero.endswith(".json"):
        return
    path = Path(launch.zero)
    config = read_json_object(path)
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise UsageError(f"{path}: zero_optimization must be an object")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise UsageError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3 (got {stage!r})")
    for key in ("offload_optimizer", "offload_param"):
        offload = zero.get(key, {})
        if not isinstance(offload, dict) or offload.get("device", "none") not in ("none", "cpu", "nvme"):
            raise UsageError(
                f"{path}: zero_optimization.{key} must be an object with device none, cpu or nvme"
            )
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        value = config.get(key, "auto")
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise UsageError(f'{path}: {key} must be a positive integer or "auto" (got {value!r})')
    for key in ("bf16", "fp16"):
        if not isinstance(config.get(key, {}), dict):
            raise UsageError(f'{path}: {key} must be an object such as {{"enabled": "auto"}}')
