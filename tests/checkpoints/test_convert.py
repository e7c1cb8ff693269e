"""glmtune.families.glm_original_layout (the ChatGLM2/3 / GLM-4 weight mapping): parameter names vs the official
indexes, exact round trip, logits vs the original architecture; glmtune.checkpoints.convert: checkpoint loading
(safetensors shards; pickled .bin only on request)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import chatglm2_reference as reference
import pytest
import torch
from original_fixtures import tiny_original_checkpoint
from safetensors.torch import save_file
from transformers import GlmForCausalLM

from glmtune.checkpoints.convert import load_original_state
from glmtune.errors import UsageError
from glmtune.families import original_layout_types
from glmtune.families.glm_original_layout import native_config, to_native, to_original


def is_original_layout(config: dict) -> bool:
    return config.get("model_type") in original_layout_types()


ASSETS = Path(
    os.environ.get("GLMTUNE_SHARED_ASSETS")
    or Path(__file__).resolve().parents[3] / "shared/assets/glm-models"
)
MODELS = ["chatglm2-6b", "chatglm3-6b", "glm-4-9b-chat"]

# A synthetic config in the original layout with the fields the official ones have (and GLM-4's rope_ratio),
# so the correctness tests run without the shared assets too.
SYNTHETIC = {
    "model_type": "chatglm",
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "ffn_hidden_size": 13696,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1.5625e-07,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 40,
    "original_rope": True,
    "padded_vocab_size": 151552,
    "post_layer_norm": True,
    "rmsnorm": True,
    "rope_ratio": 500,
    "seq_length": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def official(model: str) -> Path:
    folder = ASSETS / model
    if not (folder / "config.json").is_file():
        pytest.skip(
            f"official GLM config files not found at {folder} (../shared beside the repo, "
            "or set GLMTUNE_SHARED_ASSETS)"
        )
    return folder


def official_config(model: str) -> dict:
    return json.loads((official(model) / "config.json").read_text())


def vocab_for(config: dict) -> int:
    eos = config["eos_token_id"]
    return max(512, config["pad_token_id"] + 1, *(eos if isinstance(eos, list) else [eos])) + 1


@pytest.mark.parametrize("model", MODELS)
def test_tiny_names_match_official_index(model: str) -> None:
    config = official_config(model)
    indexes = sorted(official(model).glob("*.index.json"))
    assert indexes
    _, state = tiny_original_checkpoint(config, layers=2, vocab=vocab_for(config))
    for index in indexes:
        names = json.loads(index.read_text())["weight_map"]
        layer = re.compile(r"\.layers\.(\d+)\.")
        expected = {n for n in names if not (m := layer.search(n)) or int(m[1]) < 2}
        assert set(state) == expected, index.name


@pytest.mark.parametrize("model", MODELS)
def test_native_config_from_official(model: str) -> None:
    original = official_config(model)
    assert is_original_layout(original)
    cfg = native_config(original)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        original["hidden_size"],
        original["num_layers"],
        original["num_attention_heads"],
    )
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size) == (
        original["multi_query_group_num"],
        original["kv_channels"],
        original["ffn_hidden_size"],
        original["padded_vocab_size"],
    )
    assert cfg.rms_norm_eps == original["layernorm_epsilon"]
    assert cfg.max_position_embeddings == original["seq_length"]
    assert cfg.attention_bias is True and cfg.tie_word_embeddings is False
    assert cfg.rope_parameters["rope_theta"] == 10000.0 * original.get("rope_ratio", 1)
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.5
    assert (cfg.eos_token_id, cfg.pad_token_id) == (original["eos_token_id"], original["pad_token_id"])


def test_v1_and_other_layouts_rejected() -> None:
    assert not is_original_layout({"model_type": "glm"})
    v1 = {
        "model_type": "chatglm",
        "hidden_size": 4096,
        "inner_hidden_size": 16384,
        "position_encoding_2d": True,
    }
    assert is_original_layout(v1)
    with pytest.raises(UsageError, match="v1"):
        native_config(v1)
    with pytest.raises(UsageError, match="multi_query_attention"):
        native_config({**SYNTHETIC, "multi_query_attention": False})


@pytest.mark.parametrize("source", ["synthetic", *MODELS])
def test_round_trip_is_bit_identical(source: str) -> None:
    config = SYNTHETIC if source == "synthetic" else official_config(source)
    tiny, state = tiny_original_checkpoint(config, vocab=vocab_for(config))
    back = to_original(to_native(state, tiny), tiny)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    bf16 = {k: v.to(torch.bfloat16) for k, v in state.items() if not k.endswith("inv_freq")}
    back = to_original(to_native(bf16, tiny), tiny, with_inv_freq=False)
    assert set(back) == set(bf16) and all(torch.equal(back[k], v) for k, v in bf16.items())


def native_logits(tiny: dict, state: dict, input_ids: torch.Tensor) -> torch.Tensor:
    model = GlmForCausalLM._from_config(native_config(tiny), attn_implementation="eager", dtype=torch.float32)
    result = model.load_state_dict(to_native(state, tiny), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.mark.parametrize(
    ("rope_ratio", "heads", "kv_groups"), [(500, 4, 2), (1, 4, 1), (50, 8, 2), (1, 4, 4)]
)
def test_logits_match_original_architecture(rope_ratio: float, heads: int, kv_groups: int) -> None:
    tiny, state = tiny_original_checkpoint(
        {**SYNTHETIC, "rope_ratio": rope_ratio}, heads=heads, kv_groups=kv_groups, seed=rope_ratio
    )
    input_ids = torch.randint(
        0, tiny["padded_vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1)
    )
    expected = reference.forward(state, tiny, input_ids)
    torch.testing.assert_close(native_logits(tiny, state, input_ids), expected, atol=1e-5, rtol=1e-5)


def test_logits_comparison_is_sensitive() -> None:
    """The comparison above would catch a gate/up swap, a q/k row permutation or a wrong rope base."""
    tiny, state = tiny_original_checkpoint(SYNTHETIC)
    input_ids = torch.randint(
        0, tiny["padded_vocab_size"], (1, 24), generator=torch.Generator().manual_seed(2)
    )
    expected = reference.forward(state, tiny, input_ids)
    name = "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"
    swapped = {**state, name: torch.cat(state[name].chunk(2)[::-1])}
    assert not torch.allclose(native_logits(tiny, swapped, input_ids), expected, atol=1e-3)
    name = "transformer.encoder.layers.0.self_attention.query_key_value.weight"
    # q and k heads with their rotated half reordered from interleaved pairs to rotate_half's [evens | odds]
    head_dim, rot = tiny["kv_channels"], tiny["kv_channels"] // 2
    perm = torch.cat([torch.arange(rot).view(rot // 2, 2).t().reshape(-1), torch.arange(rot, head_dim)])
    qk_heads = tiny["num_attention_heads"] + tiny["multi_query_group_num"]
    rows = torch.cat(
        [h * head_dim + perm for h in range(qk_heads)]
        + [torch.arange(qk_heads * head_dim, state[name].shape[0])]
    )
    permuted = {
        **state,
        name: state[name][rows],
        name.replace("weight", "bias"): state[name.replace("weight", "bias")][rows],
    }
    assert not torch.allclose(native_logits(tiny, permuted, input_ids), expected, atol=1e-3)
    assert not torch.allclose(native_logits({**tiny, "rope_ratio": 1}, state, input_ids), expected, atol=1e-3)


def test_load_sharded_safetensors(tmp_path: Path) -> None:
    _, state = tiny_original_checkpoint(SYNTHETIC)
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    for file, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, tmp_path / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read: safetensors win")
    loaded = load_original_state(tmp_path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())

    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UsageError, match="missing"):
        load_original_state(tmp_path)


def test_load_single_safetensors_then_native_from_pretrained(tmp_path: Path) -> None:
    tiny, state = tiny_original_checkpoint(SYNTHETIC)
    save_file(state, tmp_path / "model.safetensors")
    loaded = load_original_state(tmp_path)
    assert set(loaded) == set(state)
    native = tmp_path / "native"
    native_config(tiny).save_pretrained(native)
    save_file(to_native(loaded, tiny), native / "model.safetensors")  # split q/k/v must not share storage
    model = GlmForCausalLM.from_pretrained(native, attn_implementation="eager").eval()
    input_ids = torch.arange(16).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    torch.testing.assert_close(logits, reference.forward(state, tiny, input_ids), atol=1e-5, rtol=1e-5)


def test_bin_needs_allow_pickle(tmp_path: Path) -> None:
    _, state = tiny_original_checkpoint(SYNTHETIC)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(UsageError, match=r"pytorch_model\.bin.*model\.allow_pickle = true"):
        load_original_state(tmp_path)
    loaded = load_original_state(tmp_path, allow_pickle=True)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no \\*.safetensors"):
        load_original_state(tmp_path)
