"""`train.packing`: several samples per row, each one isolated as if it ran alone.

`pack_rows` places samples into rows of at most `max_length` tokens by best-fit decreasing (longest sample first,
into the fullest row it still fits; the same 11/9 OPT + 6/9 worst-case bound as first-fit decreasing, and fuller
rows in practice). A packed row carries `position_ids` restarting at 0 for every sample and NO attention mask:
transformers (masking_utils.find_packed_sequence_indices) reads the restarts as sequence boundaries and builds a
block-diagonal causal mask for sdpa/eager, and flash-attention runs its variable-length kernels from the same
position ids when the batch is flattened into one row (modeling_flash_attention_utils._is_packed_sequence).
Padding at a row's end gets its own restarting positions, so it is one more isolated (and untrained) sequence.
transformers reads packed position ids only when there is no KV cache, and a model in training mode without
gradient checkpointing builds one by default (config.use_cache): every packed batch therefore says use_cache=False.

Each sample's first label is dropped: unpacked, the first token is never a target (the causal loss shifts labels
by one); packed, it would be predicted from the previous sample's last token. With that, a packed row's summed
loss is exactly the sum of its samples' losses, and the Trainer divides by the supervised tokens of the whole
accumulated step (`num_items_in_batch`) in both cases: packed and unpacked runs optimise the same per-token mean.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Sample indices per row, best-fit decreasing; every length must be at most `capacity`."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    rows: list[list[int]] = []
    open_rows: list[tuple[int, int]] = []  # (space left, row), sorted: the fullest fitting row first
    for index in order:
        need = lengths[index]
        if need > capacity:
            raise ValueError(f"sample {index} has {need} tokens, more than a row holds ({capacity})")
        at = bisect_left(open_rows, (need, -1))
        if at == len(open_rows):
            rows.append([index])
            space, row = capacity - need, len(rows) - 1
        else:
            space, row = open_rows.pop(at)
            rows[row].append(index)
            space -= need
        if space > 0:
            insort(open_rows, (space, row))
    return rows


def pack_dataset(dataset, max_length: int):
    """A datasets.Dataset of packed rows (input_ids, labels, position_ids) from one of input_ids and labels."""
    from datasets import Dataset

    ids, labels = dataset["input_ids"], dataset["labels"]
    columns: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    for row in pack_rows([len(sample) for sample in ids], max_length):
        columns["input_ids"].append([token for index in row for token in ids[index]])
        columns["labels"].append([t for index in row for t in [IGNORE_INDEX, *labels[index][1:]]])
        columns["position_ids"].append([p for index in row for p in range(len(ids[index]))])
    return Dataset.from_dict(columns)


class PackedCollator:
    """Batches packed rows: pads each to the longest row (padding restarts its own positions, labels ignored) or,
    where attention runs per packed sample (flash-attention's varlen kernels need batch 1; `packed_sdpa`), lays the
    whole batch out as one row: no padding at all."""

    def __init__(self, pad_token_id: int, flatten: bool = False) -> None:
        self.pad_token_id, self.flatten = pad_token_id, flatten

    def __call__(self, rows: list[dict[str, Any]]):
        import torch

        if self.flatten:
            rows = [{key: [value for row in rows for value in row[key]] for key in rows[0]}]
        width = max(len(row["input_ids"]) for row in rows)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
        for row in rows:
            pad = width - len(row["input_ids"])
            batch["input_ids"].append([*row["input_ids"], *[self.pad_token_id] * pad])
            batch["labels"].append([*row["labels"], *[IGNORE_INDEX] * pad])
            batch["position_ids"].append([*row["position_ids"], *range(pad)])
        tensors: dict[str, Any] = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        return tensors | {"use_cache": False}  # with a cache, transformers ignores the packed position ids


PACKED_SDPA = "glmtune_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """sdpa run once per packed sample (causal within it), so a row costs the sum of its samples' squared lengths,
    not the row length squared as the block-diagonal mask does: flash-attention varlen's saving, on any device.
    Outside training, or for a batch without restarts, it is transformers' sdpa with the mask it was given."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    positions = kwargs.pop("position_ids", None)
    if not module.training or positions is None or not bool((positions[:, 1:] == 0).any()):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)

    def causal(q, k, v):
        return sdpa_attention_forward(module, q, k, v, None, dropout, scaling, is_causal=True)[0]

    rows = []
    for row, row_positions in enumerate(positions.expand(query.shape[0], -1)):
        starts = [*torch.nonzero(row_positions == 0).flatten().tolist(), row_positions.numel()]
        one = slice(row, row + 1)
        spans = [slice(start, end) for start, end in zip(starts, starts[1:], strict=False)]
        pieces = [causal(query[one, :, at], key[one, :, at], value[one, :, at]) for at in spans]
        rows.append(torch.cat(pieces, dim=1))
    return torch.cat(rows, dim=0), None


def use_packed_sdpa(model) -> None:
    """Register `packed_sdpa` with transformers (its mask is sdpa's, used outside training) and switch `model`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    model.set_attn_implementation(PACKED_SDPA)
