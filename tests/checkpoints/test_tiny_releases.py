"""The builtin tiny checkpoints of the GLM-4.5+ releases: the official config's architectural switches kept (checked
against ../shared when present; for GLM-5.3-Flash, whose config.json was not found, against transformers'
GLM-5.3-Flash-style defaults), the family's special and stop tokens in the tokenizer, and a model that builds."""

import json

import pytest
from conftest import SHARED_ASSETS

from glmtune.checkpoints.tiny import builtin_path
from glmtune.families import REGISTRY, tiny_specs

SHARED = SHARED_ASSETS
RELEASE_FAMILIES = {"glm4_5", "glm4_7", "glm5", "glm5_2", "glm5_3"}
RELEASES = sorted(name for name, (family, _) in tiny_specs().items() if family.name in RELEASE_FAMILIES)
# config.json fields that are bookkeeping or sizes, not switches of the architecture (model_type is compared on its
# own; every tiny model unties its head, as every GLM-4.5+ config does)
NOT_SWITCHES = {"architectures", "dtype", "torch_dtype", "transformers_version", "eos_token_id", "pad_token_id",
                "initializer_range", "max_position_embeddings", "index_topk_pattern", "model_type",
                "tie_word_embeddings"}  # fmt: skip
INT_SWITCHES = {"n_group", "topk_group", "n_shared_experts", "num_nextn_predict_layers", "moe_layer_freq",
                "ep_size", "pretraining_tp", "index_skip_topk_offset", "index_topk_freq", "hc_mult", "hc_sinkhorn_iters", "linear_conv_kernel_dim"}  # fmt: skip


def switches_of(config: dict) -> dict:
    """The architectural switches of a config: flags, names and rates, and the integers that select a variant."""
    return {
        key: value
        for key, value in config.items()
        if key not in NOT_SWITCHES
        and value is not None
        and (not isinstance(value, int) or isinstance(value, bool) or key in INT_SWITCHES)
        and not isinstance(value, (list, dict))
    }


def test_every_glm4_5_and_later_family_has_a_native_release_tiny():
    families = {family.name for name, (family, spec) in tiny_specs().items() if spec.layout == "native"}
    assert families >= RELEASE_FAMILIES


@pytest.mark.parametrize("name", RELEASES)
def test_tiny_spec_keeps_every_switch_of_the_official_config(name):
    _, spec = tiny_specs()[name]
    if not spec.source:
        pytest.skip(f"{name}: no official config.json was found (see its family module)")
    path = SHARED / spec.source
    if not path.is_file():
        pytest.skip(f"{path} not present")
    official = json.loads(path.read_text())
    assert official["model_type"] == spec.model_type
    switches = switches_of(official)
    assert switches, "the official config has switches"
    assert {key: spec.config.get(key) for key in switches} == switches


def test_tiny_glm5_3_flash_keeps_every_switch_of_transformers_glm5_next_defaults():
    from transformers import AutoConfig, Glm5NextTextConfig

    _, spec = tiny_specs()["tiny-glm5.3-flash"]
    defaults = Glm5NextTextConfig()
    switches = switches_of({key: getattr(defaults, key) for key in Glm5NextTextConfig.__annotations__})
    assert {"hc_mult", "linear_lower_bound", "swiglu_limit", "index_kpool_always_select_tail"} <= set(
        switches
    )
    assert {key: spec.config.get(key) for key in switches} == switches
    assert spec.config["qk_rope_head_dim"] == defaults.qk_rope_head_dim == 0  # NoPE attention, as shipped
    built = AutoConfig.from_pretrained(builtin_path("tiny-glm5.3-flash")).get_text_config()
    for schedule in (
        "layer_types",
        "mlp_layer_types",
        "indexer_types",
    ):  # every layer kind of the default runs
        assert set(getattr(built, schedule)) == set(getattr(defaults, schedule)) - {"shared"}, schedule


@pytest.mark.parametrize("name", RELEASES)
def test_tiny_release_folder_carries_the_family_tokens_and_stop_ids(name):
    from transformers import AutoConfig, AutoTokenizer

    family, spec = tiny_specs()[name]
    folder = builtin_path(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for token in (
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
        "<arg_key>",
        "<arg_value>",
        "/nothink",
    ):
        assert token in family.special_tokens
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert (
            tokenizer.encode(f"a{token}b", add_special_tokens=False).count(
                tokenizer.convert_tokens_to_ids(token)
            )
            == 1
        )
    stop_ids = tokenizer.convert_tokens_to_ids(list(family.stop_tokens))
    assert len(set(stop_ids)) == len(family.stop_tokens) == 3
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == stop_ids
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == spec.model_type
    if "num_nextn_predict_layers" in spec.config:  # glm5_next has no MTP count in its config
        assert config.num_nextn_predict_layers == spec.config["num_nextn_predict_layers"] == 1
    assert REGISTRY[family.name].vllm_tool_parser and REGISTRY[family.name].vllm_reasoning_parser
