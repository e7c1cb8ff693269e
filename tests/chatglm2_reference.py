"""A pure-torch forward of the ORIGINAL ChatGLM2/3 / GLM-4 (remote-code) architecture, to test the conversion.

Written from THUDM's `modeling_chatglm.py` (ChatGLM2-6B, ChatGLM3-6B, GLM-4-9B-chat) and reading the
original-layout state dict directly, so it shares no code with `glmtune.checkpoints.convert` or transformers' Glm.
Kept in the original's own conventions on purpose ([seq, batch, ...] tensors, the rope cache of (cos, sin)
pairs, the fused qkv split, `expand` of the kv groups, `chunk`-based swiglu): a test comparing it with
`GlmForCausalLM` then checks the mapping, not a re-derivation of it. Inference only, no kv cache, no padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return (weight * (x * torch.rsqrt(variance + eps))).to(x.dtype)


def rope_cache(seq_len: int, n_elem: int, rope_ratio: float) -> Tensor:
    """RotaryEmbedding.forward_impl: [seq, n_elem // 2, 2] of (cos, sin); ChatGLM3/GLM-4 scale the base."""
    base = 10000 * rope_ratio
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float) / n_elem))
    idx_theta = torch.outer(torch.arange(seq_len, dtype=torch.float), theta).float()
    return torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)


def apply_rotary_pos_emb(x: Tensor, cache: Tensor) -> Tensor:
    """As the original: rotate the first rot_dim dims as pairs (x[2i], x[2i+1]); x: [sq, b, np, hn]."""
    sq, np_ = x.size(0), x.size(2)
    rot_dim = cache.shape[-2] * 2
    x, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    cache = cache[:sq]
    xshaped = x.reshape(sq, -1, np_, rot_dim // 2, 2)
    cache = cache.view(sq, -1, 1, xshaped.size(3), 2)
    out = torch.stack(
        [
            xshaped[..., 0] * cache[..., 0] - xshaped[..., 1] * cache[..., 1],
            xshaped[..., 1] * cache[..., 0] + xshaped[..., 0] * cache[..., 1],
        ],
        -1,
    )
    return torch.cat((out.flatten(3), x_pass), dim=-1)


def self_attention(h: Tensor, sd: dict[str, Tensor], p: str, cfg: dict, cache: Tensor) -> Tensor:
    heads, groups, hn = cfg["num_attention_heads"], cfg["multi_query_group_num"], cfg["kv_channels"]
    mixed = F.linear(h, sd[p + "query_key_value.weight"], sd.get(p + "query_key_value.bias"))
    q, k, v = mixed.split([heads * hn, groups * hn, groups * hn], dim=-1)
    q = q.view(*q.shape[:-1], heads, hn)
    k = k.view(*k.shape[:-1], groups, hn)
    v = v.view(*v.shape[:-1], groups, hn)
    q, k = apply_rotary_pos_emb(q, cache), apply_rotary_pos_emb(k, cache)
    # multi-query groups: each group serves heads // groups consecutive heads
    k = k.unsqueeze(-2).expand(-1, -1, -1, heads // groups, -1).contiguous().view(*k.shape[:2], heads, hn)
    v = v.unsqueeze(-2).expand(-1, -1, -1, heads // groups, -1).contiguous().view(*v.shape[:2], heads, hn)
    q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, np, s, hn]
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hn)
    s = scores.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool).tril_()
    scores = scores.float().masked_fill(~causal, float("-inf"))
    context = torch.matmul(F.softmax(scores, dim=-1).type_as(v), v)  # [b, np, s, hn]
    context = context.permute(2, 0, 1, 3).reshape(s, -1, heads * hn)
    return F.linear(context, sd[p + "dense.weight"])


def mlp(h: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    x = torch.chunk(F.linear(h, sd[p + "dense_h_to_4h.weight"]), 2, dim=-1)
    return F.linear(F.silu(x[0]) * x[1], sd[p + "dense_4h_to_h.weight"])


@torch.no_grad()
def forward(sd: dict[str, Tensor], cfg: dict, input_ids: Tensor) -> Tensor:
    """Logits [batch, seq, vocab] of ChatGLMForConditionalGeneration for a batch without padding."""
    eps = cfg["layernorm_epsilon"]
    # [s, b, h] as the original
    h = F.embedding(input_ids, sd["transformer.embedding.word_embeddings.weight"]).transpose(0, 1)
    cache = rope_cache(input_ids.shape[1], cfg["kv_channels"] // 2, cfg.get("rope_ratio", 1))
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        normed = rms_norm(h, sd[p + "input_layernorm.weight"], eps)
        h = h + self_attention(normed, sd, p + "self_attention.", cfg, cache)
        h = h + mlp(rms_norm(h, sd[p + "post_attention_layernorm.weight"], eps), sd, p + "mlp.")
    h = rms_norm(h, sd["transformer.encoder.final_layernorm.weight"], eps)
    return F.linear(h, sd["transformer.output_layer.weight"]).transpose(0, 1).float()
