"""Read the weight files of a checkpoint folder: safetensors (sharded or not), pickled `.bin` only on request.

The mapping of original parameter names to a loading architecture is family data (`WeightLayout` in
glmtune.families); this module only reads tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from glmtune.errors import UsageError


def _load_bin(path: Path) -> dict[str, Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # pre-1.6 (non-zip) files cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def load_original_state(folder: Path, *, allow_pickle: bool = False) -> dict[str, Tensor]:
    """All tensors of a checkpoint folder: safetensors (sharded with an index, or single files) first;
    pickled `*.bin` only with `allow_pickle=True`, since unpickling runs code from the file."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for suffix, loader in ((".safetensors", load_file), (".bin", _load_bin)):
        index = next(iter(sorted(folder.glob(f"*{suffix}.index.json"))), None)
        if index is not None:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [folder / name for name in names]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise UsageError(f"{index}: lists shard(s) that are missing: {', '.join(missing)}")
        else:
            files = sorted(folder.glob(f"*{suffix}"))
        if not files:
            continue
        if suffix == ".bin" and not allow_pickle:
            raise UsageError(
                f"{files[0]}: weights are pickled (.bin) and loading them can run code; "
                "set model.allow_pickle = true if you trust this checkpoint"
            )
        state: dict[str, Tensor] = {}
        for file in files:
            state.update(loader(file))
        return state
    raise UsageError(f"{folder}: no *.safetensors or *.bin weight files found")
