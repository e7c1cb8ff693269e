"""The original remote-code GLM weight layout (ChatGLM2-6B, ChatGLM3-6B, GLM-4-9B-chat) mapped onto native `glm`.

Those checkpoints ship Python code that no longer runs on transformers 5, but their architecture is exactly
`GlmForCausalLM`. So instead of running their code we rename and split the tensors (`to_native`), build a
`GlmConfig` from their `config.json` (`native_config`), and map back bit-exactly (`to_original`). A family whose
original folders use this layout names `WEIGHTS` (or `WEIGHTS_WITHOUT_ROPE_RATIO`) in its record.

Facts the mapping relies on (checked against the original `modeling_chatglm.py` and transformers'
`modeling_glm.py`, and by tests/checkpoints/test_convert.py against a reference forward of the original architecture):
- fused `query_key_value` rows are [all q heads | k groups | v groups], each head `kv_channels` wide;
- `dense_h_to_4h` rows are [gate | up]: the original computes `silu(x0) * x1`, Glm `up * silu(gate)` with
  `gate, up = chunk(2)`, so the fused weight is copied unchanged;
- both rotate the first half of each head with interleaved pairs (2i, 2i+1) at frequency base^(-2i/(hd/2)),
  so q/k rows need no permutation; base = 10000 * rope_ratio (the later checkpoints' semantics);
- `rotary_pos_emb.inv_freq` is a buffer the original forward never reads (only its dtype), so it is dropped
  and regenerated the way the original `RotaryEmbedding.__init__` computes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from glmtune.errors import UsageError
from glmtune.families.base import WeightLayout

MODEL_TYPE = "chatglm"  # config.json model_type of this layout
LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_NATIVE_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# Per-layer names that are a pure rename (the fused qkv is handled separately).
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_GLOBAL_RENAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
INV_FREQ = "transformer.rotary_pos_emb.inv_freq"
# Flags of the original ChatGLMConfig (with its defaults) that Glm hard-codes; other values mean another
# architecture, which a rename cannot convert.
_REQUIRED_FLAGS = {
    "rmsnorm": (True, True),
    "post_layer_norm": (True, True),
    "apply_residual_connection_post_layernorm": (False, False),
    "add_bias_linear": (False, False),
    "multi_query_attention": (False, True),
    "original_rope": (True, True),
}


def check_config(original: Mapping[str, Any], *, rope_ratio: bool = True) -> tuple[int, int, int]:
    """(attention heads, kv groups, head dim) after checking the config is this layout; `rope_ratio=False` for
    checkpoints whose rope_ratio divided positions (position interpolation) instead of scaling the base."""
    if original.get("model_type") != MODEL_TYPE:
        raise UsageError(
            f"config.json: model_type is {original.get('model_type')!r}, expected {MODEL_TYPE!r}"
        )
    if "padded_vocab_size" not in original or "kv_channels" not in original:
        raise UsageError(
            "config.json: no padded_vocab_size/kv_channels, so not the ChatGLM2/3 / GLM-4 layout "
            "(a ChatGLM-6B v1 checkpoint? set model.family = chatglm)"
        )
    for key, (default, wanted) in _REQUIRED_FLAGS.items():
        if original.get(key, default) != wanted:
            raise UsageError(
                f"config.json: {key} = {original.get(key, default)!r} is not supported (this layout uses {wanted!r})"
            )
    if original.get("pre_seq_len") is not None:
        raise UsageError(
            "config.json: pre_seq_len is set (a P-tuning v2 checkpoint); set it to null or "
            "convert the base model instead"
        )
    if not rope_ratio and original.get("rope_ratio", 1) != 1:
        raise UsageError(
            "config.json: rope_ratio (position interpolation, as in ChatGLM2-6B-32K) is not supported"
        )
    return original["num_attention_heads"], original["multi_query_group_num"], original["kv_channels"]


def native_config(original: Mapping[str, Any], *, rope_ratio: bool = True) -> Any:
    """The `GlmConfig` equivalent of an original `config.json` dict of this layout."""
    from transformers import GlmConfig

    check_config(original, rope_ratio=rope_ratio)
    dtype = original.get("torch_dtype")
    return GlmConfig(
        vocab_size=original["padded_vocab_size"],
        hidden_size=original["hidden_size"],
        intermediate_size=original["ffn_hidden_size"],
        num_hidden_layers=original["num_layers"],
        num_attention_heads=original["num_attention_heads"],
        num_key_value_heads=original["multi_query_group_num"],
        head_dim=original["kv_channels"],
        hidden_act="silu",
        attention_dropout=original.get("attention_dropout", 0.0),
        max_position_embeddings=original["seq_length"],
        rms_norm_eps=original["layernorm_epsilon"],
        attention_bias=bool(original.get("add_qkv_bias", False)),
        tie_word_embeddings=bool(original.get("tie_word_embeddings", False)),
        # The original rotates kv_channels // 2 dims of each head, hence the fixed factor.
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * float(original.get("rope_ratio", 1)),
            "partial_rotary_factor": 0.5,
        },
        pad_token_id=original.get("pad_token_id"),
        eos_token_id=original.get("eos_token_id"),
        bos_token_id=original.get("bos_token_id"),
        **({"dtype": dtype} if dtype else {}),
    )


def to_native(state: dict[str, Any], original: Mapping[str, Any]) -> dict[str, Any]:
    """Rename/split an original-layout state dict into `GlmForCausalLM` parameter names."""
    import torch

    heads, groups, head_dim = check_config(original)
    sizes = [heads * head_dim, groups * head_dim, groups * head_dim]
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        if name == INV_FREQ:
            continue
        if name in _GLOBAL_RENAMES:
            out[_GLOBAL_RENAMES[name]] = tensor
            continue
        match = LAYER.match(name)
        if match is None:
            raise UsageError(f"unexpected parameter {name!r}: not a ChatGLM2/3 or GLM-4 layout checkpoint")
        prefix, rest = f"model.layers.{match[1]}.", match[2]
        if rest in _LAYER_RENAMES:
            out[prefix + _LAYER_RENAMES[rest]] = tensor
        elif rest.startswith("self_attention.query_key_value."):
            kind = rest.rsplit(".", 1)[1]
            if tensor.shape[0] != sum(sizes):
                raise UsageError(f"{name}: {tensor.shape[0]} rows, config implies {sum(sizes)}")
            # clone: split() returns views of one storage, which safetensors refuses to save.
            for proj, part in zip("qkv", torch.split(tensor, sizes, dim=0), strict=True):
                out[f"{prefix}self_attn.{proj}_proj.{kind}"] = part.clone()
        else:
            raise UsageError(f"unexpected parameter {name!r}: not a ChatGLM2/3 or GLM-4 layout checkpoint")
    return out


def inv_freq(original: Mapping[str, Any], dtype: Any) -> Any:
    """As the original RotaryEmbedding.__init__: dim = kv_channels // 2, base 10000 regardless of rope_ratio,
    computed in the checkpoint dtype."""
    import torch

    dim = original["kv_channels"] // 2
    return 1.0 / (10000 ** (torch.arange(0, dim, 2).to(dtype=dtype) / dim))


def to_original(
    state: dict[str, Any], original: Mapping[str, Any], *, with_inv_freq: bool = True
) -> dict[str, Any]:
    """Exact inverse of `to_native`; regenerates `rotary_pos_emb.inv_freq` (all three official indexes
    list it) unless `with_inv_freq=False`."""
    import torch

    check_config(original)
    layer_back = {v: k for k, v in _LAYER_RENAMES.items()}
    global_back = {v: k for k, v in _GLOBAL_RENAMES.items()}
    out: dict[str, Any] = {}
    fused: dict[tuple[str, str], dict[str, Any]] = {}
    for name, tensor in state.items():
        if name in global_back:
            out[global_back[name]] = tensor
            continue
        match = _NATIVE_LAYER.match(name)
        if match is None:
            raise UsageError(f"unexpected parameter {name!r}: not a GlmForCausalLM state dict")
        prefix, rest = f"transformer.encoder.layers.{match[1]}.", match[2]
        qkv = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if rest in layer_back:
            out[prefix + layer_back[rest]] = tensor
        elif qkv:
            fused.setdefault((prefix, qkv[2]), {})[qkv[1]] = tensor
        else:
            raise UsageError(f"unexpected parameter {name!r}: not a GlmForCausalLM state dict")
    for (prefix, kind), parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise UsageError(f"{prefix}: self_attn has only {sorted(parts)} {kind}, need q, k and v")
        out[f"{prefix}self_attention.query_key_value.{kind}"] = torch.cat([parts[p] for p in "qkv"], dim=0)
    if with_inv_freq:
        embed = state.get("model.embed_tokens.weight")
        out[INV_FREQ] = inv_freq(original, embed.dtype if embed is not None else torch.float32)
    return out


def _glm_class() -> Any:
    from transformers import GlmForCausalLM

    return GlmForCausalLM


WEIGHTS = WeightLayout(
    name="glm-original",
    loading_config=native_config,
    model_class=_glm_class,
    to_loaded=to_native,
    to_original=to_original,
)
WEIGHTS_WITHOUT_ROPE_RATIO = WeightLayout(
    name="glm-original (rope_ratio refused)",
    loading_config=lambda original: native_config(original, rope_ratio=False),
    model_class=_glm_class,
    to_loaded=to_native,
    to_original=to_original,
)
# LoRA targets of checkpoints in this layout: they load as native `glm`, so LoRA wraps the native module names.
NATIVE_GLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
LORA_TARGETS = {"glm": NATIVE_GLM_TARGETS}
# The official ChatGLM3-6B config.json (ChatGLM2-6B's differs in seq_length): the shape the builtin tiny
# original-layout checkpoints shrink. No auto_map: the tiny folders ship no code, as glmtune never runs it.
OFFICIAL_CONFIG: dict[str, Any] = {
    "model_type": MODEL_TYPE,
    "architectures": ["ChatGLMModel"],
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "ffn_hidden_size": 13696,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1e-05,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 28,
    "original_rope": True,
    "padded_vocab_size": 65024,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 8192,
    "use_cache": True,
    "torch_dtype": "float16",
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
# The sizes of glmtune's builtin tiny checkpoints in this layout: 2 layers, width 64.
TINY_SIZES = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_attention_heads": 4,
    "multi_query_group_num": 2,
    "kv_channels": 16,
    "ffn_hidden_size": 128,
    "torch_dtype": "float32",
}
