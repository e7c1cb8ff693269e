"""Packing: rows filled by best-fit decreasing, and a packed row computes exactly what its samples compute alone."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_recipe

from glmtune.checkpoints.load import load_model
from glmtune.checkpoints.tiny import builtin_path
from glmtune.errors import UsageError
from glmtune.families import CHATGLM, GLM4
from glmtune.recipe_files import recipe_from_dict
from glmtune.training.loss import plain_cross_entropy
from glmtune.training.packing import (
    IGNORE_INDEX,
    PACKED_SDPA,
    PackedCollator,
    pack_dataset,
    pack_rows,
    use_packed_sdpa,
)
from glmtune.training.train import train, use_packing

FAMILY_LAYOUTS = ["tiny-glm4", "tiny-glm", "tiny-glm4-moe", "tiny-chatglm3", "tiny-chatglm2"]


def test_rows_hold_every_sample_once_within_capacity():
    lengths = [random.Random(seed).randint(1, 100) for seed in range(500)]
    rows = pack_rows(lengths, 128)
    placed = sorted(index for row in rows for index in row)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    lower_bound = -(-sum(lengths) // 128)
    assert len(rows) <= lower_bound * 11 / 9 + 1  # the FFD/BFD worst case; in practice it is at the bound


def test_best_fit_fills_the_tightest_row():

    assert pack_rows([6, 5, 4, 1], 10) == [[0, 2], [1, 3]]  # 1 goes to the row with 5 left, not the full one


def test_overlong_sample_is_an_error():
    with pytest.raises(ValueError, match="more than a row holds"):
        pack_rows([3, 11], 10)


def _samples(vocab: int, lengths: list[int], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for length in lengths:
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * (length // 3) + ids[length // 3 :]  # a prompt, then a trained answer
        samples.append({"input_ids": ids, "labels": labels})
    return samples


@pytest.mark.parametrize("attention", ["sdpa", "eager", PACKED_SDPA])
@pytest.mark.parametrize("name", FAMILY_LAYOUTS)
def test_packed_row_equals_each_sample_alone(name, attention):
    from datasets import Dataset

    model = load_model(builtin_path(name), dtype="float32").eval()
    if attention == PACKED_SDPA:
        use_packed_sdpa(model)
    else:
        model.set_attn_implementation(attention)
    samples = _samples(model.config.vocab_size, [17, 9, 30, 5])
    packed = pack_dataset(Dataset.from_list(samples), max_length=64)
    assert len(packed) == 1  # 61 tokens in one row: every sample shares it
    batch = PackedCollator(pad_token_id=0)([packed[0], {"input_ids": [1] * 3, "labels": [IGNORE_INDEX] * 3,
                                                        "position_ids": [0, 1, 2]}])  # fmt: skip
    assert "attention_mask" not in batch  # the restarting position ids are the mask
    model.train()  # dropout is 0 in the tiny models; training mode is where a default KV cache would hide packing
    with torch.no_grad():
        logits = model(**batch).logits[0]
        packed_loss = plain_cross_entropy(logits[None], batch["labels"][:1], num_items_in_batch=1)
        alone_loss = torch.zeros(())
        order = [samples[i] for i in pack_rows([len(s["input_ids"]) for s in samples], 64)[0]]
        start = 0
        for sample in order:
            ids = torch.tensor([sample["input_ids"]])
            alone = model(input_ids=ids).logits[0]
            torch.testing.assert_close(logits[start : start + ids.shape[1]], alone, rtol=1e-5, atol=1e-5)
            alone_loss += plain_cross_entropy(
                alone[None], torch.tensor([sample["labels"]]), num_items_in_batch=1
            )
            start += ids.shape[1]
    torch.testing.assert_close(packed_loss, alone_loss, rtol=1e-6, atol=1e-5)


def test_flash_layout_flattens_the_batch_into_one_row():
    rows = [{"input_ids": [5, 6], "labels": [-100, 6], "position_ids": [0, 1]},
            {"input_ids": [7], "labels": [-100], "position_ids": [0]}]  # fmt: skip
    batch = PackedCollator(pad_token_id=0, flatten=True)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7]]
    assert batch["position_ids"].tolist() == [[0, 1, 0]]


def test_packed_sdpa_gives_a_flattened_batch_the_loss_of_the_padded_one():
    from datasets import Dataset

    model = load_model(builtin_path("tiny-glm4"), dtype="float32")
    use_packed_sdpa(model)
    samples = _samples(model.config.vocab_size, [17, 9, 30, 5, 40, 22, 3])
    rows = list(pack_dataset(Dataset.from_list(samples), max_length=48))
    assert len(rows) > 1
    padded, flat = PackedCollator(0)(rows), PackedCollator(0, flatten=True)(rows)
    assert flat["input_ids"].shape == (
        1,
        sum(len(s["input_ids"]) for s in samples),
    )  # not one padding position
    model.train()
    with torch.no_grad():
        losses = [
            plain_cross_entropy(model(**batch).logits, batch["labels"], num_items_in_batch=1)
            for batch in (padded, flat)
        ]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)


def test_first_label_of_each_sample_is_dropped():
    from datasets import Dataset

    packed = pack_dataset(Dataset.from_list([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]},
                                             {"input_ids": [4, 5], "labels": [4, 5]}]), 8)  # fmt: skip
    assert packed[0]["labels"] == [IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]
    assert packed[0]["position_ids"] == [0, 1, 2, 0, 1]


def _recipe(**train):
    return recipe_from_dict({"model": {"path": "builtin:tiny-glm4"}, "train": train}, where="test")


def test_auto_packs_where_the_family_can():
    assert use_packing(_recipe(), GLM4)
    assert not use_packing(_recipe(), CHATGLM)
    assert not use_packing(_recipe(group_by_length=True), GLM4)
    assert not use_packing(_recipe(packing=False), GLM4)


def test_chatglm6b_refuses_packing_with_one_line():
    with pytest.raises(
        UsageError, match=r"train.packing: ChatGLM-6B .* cannot pack samples.*packing = false"
    ):
        use_packing(_recipe(packing=True), CHATGLM)
    with pytest.raises(UsageError, match="pick one"):
        use_packing(_recipe(packing=True, group_by_length=True), GLM4)


def test_packed_training_runs_and_lowers_the_loss(tmp_path):
    import json

    recipe = tiny_recipe(tmp_path, "builtin:tiny-glm4", "train.packing=true", "train.max_steps=6")
    run = train(recipe)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]  # fmt: skip
    assert losses[-1] < losses[0]
