"""The training loss without the full logits: GLM's 151k-row vocabulary makes them the largest tensor of a step.

`chunked_cross_entropy` computes the causal-LM loss from the final hidden states and the output projection a few
thousand tokens at a time; each chunk's logits are recomputed in backward (activation checkpointing per chunk), so
neither the fp32 logits nor their gradient ever exist for the whole batch. Reduction is the one transformers uses:
the sum over supervised tokens divided by `num_items_in_batch` (the Trainer's count over the whole accumulated step)
or, without it, by this batch's supervised tokens.

`HeadLoss` plugs it into the Trainer: a forward pre-hook on the model's output projection keeps the hidden states
and hands the projection an empty slice while training (so the model returns no logits), and `compute_loss_func`
turns the kept states into the loss. On CUDA it uses Liger's fused linear cross-entropy for the model types Liger
patches; evaluation and generation (the model in eval mode) see the ordinary full logits.
"""

from __future__ import annotations

import importlib.util
from typing import Any

IGNORE_INDEX = -100
CHUNK_TOKENS = 1024  # logits of 1,024 tokens x 151,552 rows: 0.6 GB in fp32, the most a chunk holds


def chunked_cross_entropy(hidden, weight, labels, num_items_in_batch=None, chunk_tokens: int = CHUNK_TOKENS):
    """Causal-LM cross-entropy of `hidden @ weight.T` against `labels` shifted by one, chunk by chunk."""
    import torch
    from torch.utils.checkpoint import checkpoint

    targets = _shifted(labels)
    flat = hidden.reshape(-1, hidden.shape[-1])
    keep = targets != IGNORE_INDEX  # positions without a target cost nothing
    flat, targets = flat[keep], targets[keep]
    total = flat.new_zeros((), dtype=torch.float32)
    for start in range(0, flat.shape[0], chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_loss, flat[piece], weight, targets[piece], use_reentrant=False)
    return total / _divisor(num_items_in_batch, targets.numel(), total.device)


def _chunk_loss(hidden, weight, targets):
    import torch

    logits = (hidden @ weight.T).float()  # matmul in the model's dtype, softmax in fp32, as plain
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def _divisor(num_items_in_batch, supervised: int, device):
    import torch

    if num_items_in_batch is None:
        return max(supervised, 1)
    return torch.as_tensor(num_items_in_batch, device=device).clamp(min=1)


def fused_cross_entropy(hidden, weight, labels, num_items_in_batch=None):
    """Liger's Triton kernel: the same sum over supervised tokens, logits never leave on-chip blocks."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    targets = _shifted(labels)
    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
    total = loss(weight, hidden.reshape(-1, hidden.shape[-1]), targets)
    return total / _divisor(num_items_in_batch, int((targets != IGNORE_INDEX).sum()), total.device)


def _shifted(labels):
    import torch

    return torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)


def plain_cross_entropy(logits, labels, num_items_in_batch=None):
    """The full-logits loss (what transformers' ForCausalLMLoss computes), for evaluation and the tests."""
    import torch

    targets = _shifted(labels)
    flat = logits.reshape(-1, logits.shape[-1]).float()
    total = torch.nn.functional.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / _divisor(num_items_in_batch, int((targets != IGNORE_INDEX).sum()), total.device)


def liger_supports(model_type: str) -> bool:
    """Liger installed, CUDA present and the model type one Liger patches (glm4, glm4v, glm4v_moe in Liger 0.6)."""
    import torch

    if importlib.util.find_spec("liger_kernel") is None or not torch.cuda.is_available():
        return False
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def resolve_loss(choice: str, model_type: str, zero_stage: int) -> str:
    """`train.loss` to the loss that runs: auto is fused where Liger supports the model, else chunked; under ZeRO-3
    the output projection's weight exists only inside its own forward, so the loss stays with the model (plain)."""
    if zero_stage == 3:
        return "plain"
    if choice == "auto":
        return "fused" if liger_supports(model_type) else "chunked"
    return choice


class HeadLoss:
    """`compute_loss_func` for the Trainer, fed by a pre-hook on the output projection (see the module docstring)."""

    def __init__(self, model, kind: str) -> None:
        import torch

        head = model.get_output_embeddings()
        if not isinstance(head, torch.nn.Linear) or head.bias is not None:
            raise ValueError(
                f"{type(head).__name__} is not a bias-free Linear head; use train.loss = 'plain'"
            )
        self.head, self.kind = head, kind
        self.hidden: Any = None  # the states the last training forward handed the head
        self.handle = head.register_forward_pre_hook(self._keep_hidden)

    def _keep_hidden(self, module, args: tuple[Any, ...]):
        if not module.training:
            self.hidden = None
            return None
        self.hidden = args[0]
        return (args[0][:, :0],)  # the model's logits come out empty; the loss below uses the kept states

    def __call__(self, outputs, labels, num_items_in_batch=None):
        if self.hidden is None:  # evaluation: the model computed full logits
            return plain_cross_entropy(outputs.logits, labels, num_items_in_batch)
        hidden, self.hidden = self.hidden, None
        loss = fused_cross_entropy if self.kind == "fused" else chunked_cross_entropy
        return loss(hidden, self.head.weight, labels, num_items_in_batch)
