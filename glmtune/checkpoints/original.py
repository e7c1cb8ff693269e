"""Original remote-code checkpoints (ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B, GLM-4-9B-chat) without their code.

Their Python files no longer run on transformers 5. Each family record says how its original folders load
(`OriginalLayout`: the tokenizer files' kind and a `WeightLayout`: the loading architecture and the parameter-name
mapping both ways), so this module only asks the record: an original-layout folder is loaded in memory
(`load_original_model`, `load_original_tokenizer`: no remote code, nothing written), `convert_checkpoint`
(`glmtune convert`) writes a folder that plain transformers loads, and `save_original_layout` writes weights back
under the original parameter names beside the base's own config.json and tokenizer files
(`glmtune export --layout original`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from glmtune.checkpoints.convert import load_original_state
from glmtune.checkpoints.remote_code import model_code, save_with_code
from glmtune.errors import UsageError
from glmtune.families import (
    FAMILY_KEY,
    Family,
    OriginalLayout,
    detect_family,
    get_family,
    original_layout_types,
    read_json,
)
from glmtune.rundir import claim_output, staged_dir

# Files of an original checkpoint that describe it beside the weights: copied into an original-layout export so
# the original tools (and their remote code, on the transformers versions it supports) load it as before.
_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def is_original_folder(folder: Path) -> bool:
    path = folder / "config.json"
    return path.is_file() and read_json(path).get("model_type") in original_layout_types()


def original_layout(family: Family) -> OriginalLayout:
    if family.original is None:
        raise UsageError(
            f"model.family: {family.name} has no original remote-code layout; leave model.family = auto"
        )
    return family.original


def original_config(folder: Path, family: Family | None = None) -> dict[str, Any]:
    """The original config.json dict, checked to be one the family's weight layout loads."""
    config = read_json(folder / "config.json")
    try:
        loading_config(config, family or detect_family(folder))
    except UsageError as exc:  # its message starts with "config.json: ..."; say which one
        raise UsageError(f"{folder}/{exc}") from None
    return config


def loading_config(original: dict[str, Any], family: Family):
    """The transformers config an original config.json loads as (the Auto classes know it)."""
    return original_layout(family).weights.loading_config(original)


def load_original_model(
    folder: Path,
    *,
    dtype,
    family: Family | None = None,
    allow_pickle: bool = False,
    quantization_config: Any = None,
):
    """The folder's weights in the family's loading architecture (mapped in memory); every checkpoint tensor must
    be used."""
    family = family or detect_family(folder)
    weights = original_layout(family).weights
    original = original_config(folder, family)
    state = weights.to_loaded(load_original_state(folder, allow_pickle=allow_pickle), original)
    loaded: Any = weights.model_class().from_pretrained(
        None,
        config=weights.loading_config(original),
        state_dict=state,
        dtype=dtype,
        quantization_config=quantization_config,
        output_loading_info=True,
    )
    model, info = loaded
    problems = {kind: sorted(info[kind]) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        details = "; ".join(
            f"{kind}: {', '.join(map(str, keys[:3]))}" for kind, keys in problems.items() if keys
        )
        raise UsageError(f"{folder}: the weights do not fit config.json ({details})")
    # peft reads the config at name_or_path to tell whether the vocabulary was resized; here that would be the
    # original config.json, not the loading config (and a missing name is looked up on the Hub as "None").
    model.config._name_or_path = model.name_or_path = ""
    return model


def load_original_tokenizer(folder: Path, family: Family):
    """The original tokenizer files as a fast tokenizer with the original ids, and a chat template: the folder's
    own (tokenizer_config.json or chat_template.jinja) or, where it has none, the family's."""
    from glmtune.families import FolderFacts
    from glmtune.families.original_tokenizer import load_original_tokenizer as from_files

    tokenizer = from_files(folder, original_layout(family).tokenizer)
    tokenizer.chat_template = FolderFacts.read(folder).chat_template or family.chat_template
    return tokenizer


def stamp_native(model, tokenizer, family: Family, generation: dict[str, Any] | None = None) -> None:
    """Record the family in config.json (a converted ChatGLM3 is model_type `glm` like GLM-4, but prompts differ)
    and the family's stop tokens in generation_config.json."""
    from transformers import GenerationConfig

    from glmtune.data.render import stop_token_ids

    setattr(model.config, FAMILY_KEY, family.name)
    model.generation_config = GenerationConfig(
        eos_token_id=stop_token_ids(family, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        **(generation or {}),
    )


def convert_checkpoint(
    source: Path, out: Path, *, family: str = "auto", allow_pickle: bool = False, overwrite: bool = False
) -> str:
    """`glmtune convert`: an original-layout folder -> a folder plain transformers loads (safetensors, tokenizer, stop
    tokens, and the module file as remote code when the loading class is glmtune's own), written beside `out` and
    renamed into place once every tensor read back bit-identical. Returns how the folder loads, in words."""
    if not is_original_folder(source):
        raise UsageError(
            f"{source / 'config.json'}: not an original-layout checkpoint glmtune knows "
            f"(model_type {', '.join(sorted(original_layout_types()))}); nothing to convert"
        )
    out = claim_output(out, "convert", overwrite=overwrite)
    from glmtune.console import quiet_libraries

    quiet_libraries()
    chosen = detect_family(source) if family == "auto" else get_family(family)
    dtype = str(read_json(source / "config.json").get("torch_dtype") or "float32")
    tokenizer = load_original_tokenizer(source, chosen)
    model = load_original_model(source, dtype=_torch_dtype(dtype), family=chosen, allow_pickle=allow_pickle)
    stamp_native(model, tokenizer, chosen)
    code = model_code(model)
    with staged_dir(out, kind="convert") as staging:
        save_with_code(model, staging, code)
        tokenizer.save_pretrained(staging)
        _check_written(staging, model.state_dict())
    return code.describe()


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _check_written(folder: Path, expected: dict[str, Any]) -> None:
    """Every tensor of `expected` reads back from the folder's safetensors bit-identical (one tensor at a time); of
    tied tensors (one tensor under several names, saved once) any one name will do."""
    import torch
    from safetensors import safe_open

    seen = set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name in expected and not torch.equal(handle.get_tensor(name), expected[name]):
                    raise RuntimeError(f"{file.name}: {name} differs from the converted tensor")
                seen.add(name)
    tied: dict[tuple[int, tuple[int, ...]], set[str]] = {}
    for name, tensor in expected.items():
        tied.setdefault((tensor.data_ptr(), tuple(tensor.shape)), set()).add(name)
    if missing := sorted(min(names) for names in tied.values() if not names & seen):
        raise RuntimeError(f"{folder}: tensors not written: {', '.join(missing[:3])}")


def save_original_layout(
    state: dict[str, Any], base: Path, family: Family, folder: Path, *, dtype: str, max_shard_size: str
) -> None:
    """Native weights under the original parameter names (safetensors shards + index) with the base's own
    config.json (plus the family stamp), tokenizer files and Python files."""
    import torch

    original = original_config(base, family)
    cast = {name: tensor.detach().to(getattr(torch, dtype)).contiguous() for name, tensor in state.items()}
    tensors = original_layout(family).weights.to_original(cast, original)
    write_shards(tensors, folder, max_shard_size)
    config = {**original, FAMILY_KEY: family.name, "torch_dtype": dtype}
    (folder / "config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    for file in _original_support_files(base, family):
        shutil.copy2(file, folder / file.name)


def _original_support_files(base: Path, family: Family) -> list[Path]:
    names = {original_layout(family).tokenizer.vocab_file, *_TOKENIZER_FILES, "generation_config.json"}
    files = [base / name for name in sorted(names) if (base / name).is_file()]
    return files + sorted(base.glob("*.py"))


def write_shards(tensors: dict[str, Any], folder: Path, max_shard_size: str) -> None:
    """safetensors shards named as transformers names them, with model.safetensors.index.json when sharded."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({name: tensors[name] for name in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": split.tensor_to_filename,
        }
        (folder / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2) + "\n", encoding="utf-8"
        )
