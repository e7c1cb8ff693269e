"""Small random checkpoints in the ORIGINAL layouts, as the official checkpoints name their parameters: test
fixtures built from explicit configs (the builtin tiny models come from glmtune.checkpoints.tiny)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from glmtune.families.glm_original_layout import INV_FREQ, check_config, inv_freq
from glmtune.families.modeling_chatglm6b import ORIGINAL_FIELDS, ChatGLM6BConfig


def tiny_original_checkpoint(
    original_config: dict,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_groups: int = 2,
    ffn: int = 128,
    vocab: int = 512,
    seed: int = 0,
) -> tuple[dict, dict[str, Tensor]]:
    """A small random fp32 checkpoint in the original layout: the real config with shrunk sizes, and exactly
    the parameter names the official checkpoints have. Norm weights and biases are random too, so a
    mapping that mixes them up changes the outputs."""
    config = dict(original_config)
    head_dim = hidden // heads
    if head_dim * heads != hidden or head_dim % 4 or heads % kv_groups:
        raise ValueError("need hidden divisible by heads, head dim divisible by 4, heads by kv_groups")
    eos = config.get("eos_token_id")
    ids = [config.get("pad_token_id"), *(eos if isinstance(eos, list) else [eos])]
    if max((i for i in ids if i is not None), default=-1) >= vocab:
        raise ValueError(f"pad/eos ids {ids} do not fit vocab={vocab}; pass a larger vocab")
    config.update(
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        multi_query_group_num=kv_groups,
        kv_channels=head_dim,
        ffn_hidden_size=ffn,
        padded_vocab_size=vocab,
        torch_dtype="float32",
    )
    if "num_hidden_layers" in config:  # GLM-4's config repeats num_layers under this name
        config["num_hidden_layers"] = layers
    check_config(config)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float) -> Tensor:
        return torch.randn(*shape, generator=gen) * scale

    def norm() -> Tensor:
        return 1.0 + rand(hidden, scale=0.1)

    qkv_rows = (heads + 2 * kv_groups) * head_dim
    state = {"transformer.embedding.word_embeddings.weight": rand(vocab, hidden, scale=1.0)}
    for i in range(layers):
        p = f"transformer.encoder.layers.{i}."
        state[p + "input_layernorm.weight"] = norm()
        state[p + "self_attention.query_key_value.weight"] = rand(qkv_rows, hidden, scale=hidden**-0.5)
        if config.get("add_qkv_bias", False):
            state[p + "self_attention.query_key_value.bias"] = rand(qkv_rows, scale=0.1)
        state[p + "self_attention.dense.weight"] = rand(hidden, heads * head_dim, scale=hidden**-0.5)
        state[p + "post_attention_layernorm.weight"] = norm()
        state[p + "mlp.dense_h_to_4h.weight"] = rand(2 * ffn, hidden, scale=hidden**-0.5)
        state[p + "mlp.dense_4h_to_h.weight"] = rand(hidden, ffn, scale=ffn**-0.5)
    state["transformer.encoder.final_layernorm.weight"] = norm()
    state["transformer.output_layer.weight"] = rand(vocab, hidden, scale=hidden**-0.5)
    state[INV_FREQ] = inv_freq(config, torch.float32)
    return config, state


def tiny_chatglm6b_checkpoint(
    seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 130528
) -> tuple[dict, dict[str, Tensor]]:
    """A small random fp32 checkpoint as the remote code's model holds it: the official config.json with shrunk sizes
    and exactly its parameter names (lm_head equal to the word embeddings, as the remote code ties them). Norm
    weights and biases are random too, so a port that mixes them up changes the outputs."""
    defaults = ChatGLM6BConfig()
    config: dict[str, Any] = {"architectures": ["ChatGLMModel"], "model_type": "chatglm"}
    config |= {key: getattr(defaults, key) for key in ORIGINAL_FIELDS}
    config |= dict(hidden_size=hidden, num_layers=layers, num_attention_heads=heads, vocab_size=vocab)
    config |= dict(inner_hidden_size=4 * hidden, torch_dtype="float32")
    if vocab <= max(value for key, value in config.items() if key.endswith("token_id")):
        raise ValueError(f"vocab={vocab} must hold the special token ids (130005 for <eop>)")
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float = 0.1, mean: float = 0.0) -> Tensor:
        return torch.randn(*shape, generator=generator) * std + mean

    def norm(prefix: str) -> dict[str, Tensor]:
        return {prefix + ".weight": randn(hidden, std=0.1, mean=1.0), prefix + ".bias": randn(hidden)}

    linears = {
        "attention.query_key_value": (3 * hidden, hidden),
        "attention.dense": (hidden, hidden),
        "mlp.dense_h_to_4h": (4 * hidden, hidden),
        "mlp.dense_4h_to_h": (hidden, 4 * hidden),
    }
    state = {"transformer.word_embeddings.weight": randn(vocab, hidden, std=0.5)}
    for i in range(layers):
        p = f"transformer.layers.{i}."
        state |= norm(p + "input_layernorm") | norm(p + "post_attention_layernorm")
        for name, (rows, cols) in linears.items():
            # fan-in scaling keeps activations O(1), so small numeric slips (gelu variant, rotary rounding) show
            state |= {
                p + name + ".weight": randn(rows, cols, std=cols**-0.5),
                p + name + ".bias": randn(rows),
            }
    state |= norm("transformer.final_layernorm")
    state["lm_head.weight"] = state["transformer.word_embeddings.weight"].clone()
    return config, state
