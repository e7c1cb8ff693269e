"""The chunked loss equals the plain full-logits loss, in value and gradients, and plugs into a real model."""

from __future__ import annotations

import pytest
import torch

from glmtune.checkpoints.load import load_model
from glmtune.checkpoints.tiny import builtin_path
from glmtune.training.loss import (
    HeadLoss,
    chunked_cross_entropy,
    liger_supports,
    plain_cross_entropy,
    resolve_loss,
)

IGNORE = -100


def _problem(seed: int = 0, batch: int = 3, length: int = 37, hidden: int = 16, vocab: int = 101):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, length, hidden, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, hidden, generator=generator, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[:, :5] = IGNORE  # prompts
    labels[1, 20:] = IGNORE  # padding
    return states, weight, labels


def _gradients(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("chunk_tokens", [1, 7, 4096])
@pytest.mark.parametrize("num_items", [None, 250])
def test_chunked_loss_and_gradients_equal_the_plain_loss(chunk_tokens, num_items):
    states, weight, labels = _problem()
    plain = plain_cross_entropy(states @ weight.T, labels, num_items)
    chunked = chunked_cross_entropy(states, weight, labels, num_items, chunk_tokens=chunk_tokens)
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    for got, want in zip(_gradients(chunked, states, weight), _gradients(plain, states, weight), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_plain_loss_is_what_transformers_computes():
    from transformers.loss.loss_utils import ForCausalLMLoss

    states, weight, labels = _problem(seed=1)
    logits = states @ weight.T
    torch.testing.assert_close(plain_cross_entropy(logits, labels), ForCausalLMLoss(logits, labels, 101))
    torch.testing.assert_close(
        plain_cross_entropy(logits, labels, 40), ForCausalLMLoss(logits, labels, 101, num_items_in_batch=40)
    )


def test_chunked_loss_keeps_no_full_logits_for_backward():
    # What autograd saves for backward: with the chunked loss, only inputs (no [tokens, vocab] tensor).
    states, weight, labels = _problem(batch=2, length=64, vocab=5000)
    saved: list[torch.Size] = []

    def keep(tensor):
        saved.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        chunked_cross_entropy(states, weight, labels, chunk_tokens=16)
    assert all(shape.numel() < 16 * 5000 * 2 for shape in saved), saved
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        plain_cross_entropy(states @ weight.T, labels)
    assert any(shape.numel() >= 2 * 64 * 5000 for shape in saved)  # the plain loss does keep them


def test_head_loss_in_a_model_equals_the_model_loss_and_leaves_eval_logits_alone():
    model = load_model(builtin_path("tiny-glm4"), dtype="float32")
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = IGNORE
    model.train()
    reference = model(input_ids=ids, labels=labels).loss
    expected = _gradients(reference, model.lm_head.weight, model.model.embed_tokens.weight)
    head_loss = HeadLoss(model, "chunked")
    outputs = model(input_ids=ids)
    assert outputs.logits.shape[1] == 0  # no logits while training: the loss works from the hidden states
    loss = head_loss(outputs, labels)
    torch.testing.assert_close(loss, reference)
    got = _gradients(loss, model.lm_head.weight, model.model.embed_tokens.weight)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model.eval()
    with torch.no_grad():
        outputs = model(input_ids=ids)
        assert outputs.logits.shape == (2, 12, model.config.vocab_size)
        torch.testing.assert_close(head_loss(outputs, labels), reference.detach())


def test_loss_choice():
    # under ZeRO-3 the head's weight is partitioned outside its forward
    assert resolve_loss("auto", "glm4", zero_stage=3) == "plain"
    assert resolve_loss("plain", "glm4", zero_stage=0) == "plain"
    expected = "fused" if liger_supports("glm4") else "chunked"
    assert resolve_loss("auto", "glm4", zero_stage=2) == expected
    assert resolve_loss("auto", "glm", zero_stage=0) == "chunked"  # Liger patches glm4, not glm


@pytest.mark.gpu
@pytest.mark.skipif(not liger_supports("glm4"), reason="needs CUDA and liger-kernel")
def test_fused_loss_equals_the_plain_loss_on_cuda():
    from glmtune.training.loss import fused_cross_entropy

    states, weight, labels = (t.cuda() for t in _problem())
    states, weight = states.detach().requires_grad_(), weight.detach().requires_grad_()
    plain = plain_cross_entropy(states @ weight.T, labels, 250)
    fused = fused_cross_entropy(states, weight, labels, 250)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    for got, want in zip(_gradients(fused, states, weight), _gradients(plain, states, weight), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_memory_estimate_counts_the_logits_and_what_the_chunked_loss_saves():
    from glmtune.checkpoints.load import open_base
    from glmtune.recipe_files import recipe_from_dict
    from glmtune.training.launch import estimate_memory

    def estimate(loss: str):
        recipe = recipe_from_dict({"model": {"path": "builtin:tiny-glm4", "dtype": "bfloat16"},
                                   "data": {"max_length": 2048}, "train": {"batch_size": 4, "loss": loss}},
                                  where="test")  # fmt: skip
        model = open_base(recipe.model).meta_model()
        return estimate_memory(model, recipe, 1000, 10_000)

    plain, chunked = estimate("plain"), estimate("chunked")
    vocab = load_model(builtin_path("tiny-glm4")).config.vocab_size
    assert plain["logits (plain loss)"] * 2**30 == 2048 * 4 * vocab * (2 + 8)
    assert chunked["logits (chunked loss)"] * 2**30 == 1024 * vocab * (2 + 8)
    assert chunked["saved against full logits"] == pytest.approx(
        plain["logits (plain loss)"] - chunked["logits (chunked loss)"]
    )
    assert chunked["total"] < plain["total"]
