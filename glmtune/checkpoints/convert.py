"""Convert ChatGLM2-6B / ChatGLM3-6B / GLM-4-9B-chat (remote-code layout) checkpoints to native `glm`.

Those checkpoints ship Python code that no longer runs on transformers 5, but their architecture is exactly
`GlmForCausalLM`. So instead of running their code we rename and split the tensors (`to_native`), build a
`GlmConfig` from their `config.json` (`native_config`), and can map back bit-exactly (`to_original`) to export
in the layout the original tools expect. `tiny_original_checkpoint` makes small random checkpoints in the
original layout for tests and for glmtune's builtin tiny models.

Facts the mapping relies on (checked against the original `modeling_chatglm.py` and transformers'
`modeling_glm.py`, and by tests/test_convert.py against a reference forward of the original architecture):
- fused `query_key_value` rows are [all q heads | k groups | v groups], each head `kv_channels` wide;
- `dense_h_to_4h` rows are [gate | up]: the original computes `silu(x0) * x1`, Glm `up * silu(gate)` with
  `gate, up = chunk(2)`, so the fused weight is copied unchanged;
- both rotate the first half of each head with interleaved pairs (2i, 2i+1) at frequency base^(-2i/(hd/2)),
  so q/k rows need no permutation; base = 10000 * rope_ratio (ChatGLM3 / GLM-4 semantics);
- `rotary_pos_emb.inv_freq` is a buffer the original forward never reads (only its dtype), so it is dropped
  and regenerated the way the original `RotaryEmbedding.__init__` computes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor
from transformers import GlmConfig

from glmtune.errors import UsageError

_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
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
_INV_FREQ = "transformer.rotary_pos_emb.inv_freq"
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


def is_original_layout(config: dict) -> bool:
    """True for a remote-code ChatGLM `config.json` (model_type "chatglm"), including v1, which
    `native_config` then rejects with a clear message."""
    return config.get("model_type") == "chatglm"


def _dims(original: dict) -> tuple[int, int, int]:
    """(attention heads, kv groups, head dim) after checking the config is a convertible layout."""
    if not is_original_layout(original):
        raise UsageError(f"config.json: model_type is {original.get('model_type')!r}, expected 'chatglm'")
    if "padded_vocab_size" not in original or "kv_channels" not in original:
        raise UsageError(
            "config.json: this is a ChatGLM-6B (v1) checkpoint (no padded_vocab_size/kv_channels); "
            "only ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B-chat can be converted"
        )
    for key, (default, wanted) in _REQUIRED_FLAGS.items():
        if original.get(key, default) != wanted:
            raise UsageError(
                f"config.json: {key} = {original.get(key, default)!r} is not supported "
                f"(ChatGLM2/3 and GLM-4 use {wanted!r})"
            )
    if original.get("pre_seq_len") is not None:
        raise UsageError(
            "config.json: pre_seq_len is set (a P-tuning v2 checkpoint); set it to null or "
            "convert the base model instead"
        )
    # ChatGLM2-6B-32K used rope_ratio to divide positions, not to scale the base as ChatGLM3/GLM-4 do.
    if "chatglm2" in str(original.get("_name_or_path", "")).lower() and original.get("rope_ratio", 1) != 1:
        raise UsageError(
            "config.json: ChatGLM2 with rope_ratio (ChatGLM2-6B-32K, position interpolation) is not supported"
        )
    return original["num_attention_heads"], original["multi_query_group_num"], original["kv_channels"]


def native_config(original: dict) -> GlmConfig:
    """The `GlmConfig` equivalent of an original ChatGLM2/3 / GLM-4 `config.json` dict."""
    _dims(original)
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


def to_native(state: dict[str, Tensor], original: dict) -> dict[str, Tensor]:
    """Rename/split an original-layout state dict into `GlmForCausalLM` parameter names."""
    heads, groups, head_dim = _dims(original)
    sizes = [heads * head_dim, groups * head_dim, groups * head_dim]
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name == _INV_FREQ:
            continue
        if name in _GLOBAL_RENAMES:
            out[_GLOBAL_RENAMES[name]] = tensor
            continue
        match = _LAYER.match(name)
        if match is None:
            raise UsageError(f"unexpected parameter {name!r}: not a ChatGLM2/3 or GLM-4 checkpoint")
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
            raise UsageError(f"unexpected parameter {name!r}: not a ChatGLM2/3 or GLM-4 checkpoint")
    return out


def _inv_freq(original: dict, dtype: torch.dtype) -> Tensor:
    # As the original RotaryEmbedding.__init__: dim = kv_channels // 2, base 10000 regardless of rope_ratio,
    # computed in the checkpoint dtype.
    dim = original["kv_channels"] // 2
    return 1.0 / (10000 ** (torch.arange(0, dim, 2).to(dtype=dtype) / dim))


def to_original(state: dict[str, Tensor], original: dict, *, with_inv_freq: bool = True) -> dict[str, Tensor]:
    """Exact inverse of `to_native`; regenerates `rotary_pos_emb.inv_freq` (all three official indexes
    list it) unless `with_inv_freq=False`."""
    _dims(original)
    layer_back = {v: k for k, v in _LAYER_RENAMES.items()}
    global_back = {v: k for k, v in _GLOBAL_RENAMES.items()}
    out: dict[str, Tensor] = {}
    fused: dict[tuple[str, str], dict[str, Tensor]] = {}
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
        out[_INV_FREQ] = _inv_freq(original, embed.dtype if embed is not None else torch.float32)
    return out


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
    _dims(config)
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
    state[_INV_FREQ] = _inv_freq(config, torch.float32)
    return config, state
