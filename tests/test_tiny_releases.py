"""The builtin tiny checkpoints of the GLM-4.5+ releases: the official config's architectural switches kept (checked
against ../shared when present), the family's special and stop tokens in the tokenizer, and a model that builds."""

import json

import pytest
from conftest import SHARED_ASSETS

from glmtune.checkpoints.tiny import builtin_path
from glmtune.families import REGISTRY, tiny_specs

SHARED = SHARED_ASSETS
RELEASES = sorted(name for name, (_, spec) in tiny_specs().items() if spec.source)
# config.json fields that are bookkeeping or sizes, not switches of the architecture (model_type is compared on its
# own; every tiny model unties its head, as every GLM-4.5+ config does)
NOT_SWITCHES = {"architectures", "dtype", "torch_dtype", "transformers_version", "eos_token_id", "pad_token_id",
                "initializer_range", "max_position_embeddings", "index_topk_pattern", "model_type",
                "tie_word_embeddings"}  # fmt: skip
INT_SWITCHES = {"n_group", "topk_group", "n_shared_experts", "num_nextn_predict_layers", "moe_layer_freq",
                "ep_size", "pretraining_tp", "index_skip_topk_offset", "index_topk_freq"}  # fmt: skip


def test_every_glm4_5_and_later_family_with_a_native_architecture_has_a_release_tiny():
    families = {family.name for name, (family, _) in tiny_specs().items() if name in RELEASES}
    assert families == {"glm4_5", "glm4_7", "glm5", "glm5_2"}


@pytest.mark.parametrize("name", RELEASES)
def test_tiny_spec_keeps_every_switch_of_the_official_config(name):
    _, spec = tiny_specs()[name]
    path = SHARED / spec.source
    if not path.is_file():
        pytest.skip(f"{path} not present")
    official = json.loads(path.read_text())
    assert official["model_type"] == spec.model_type
    switches = {
        key: value
        for key, value in official.items()
        if key not in NOT_SWITCHES
        and (not isinstance(value, int) or isinstance(value, bool) or key in INT_SWITCHES)
        and not isinstance(value, list)
    }
    assert switches, "the official config has switches"
    assert {key: spec.config.get(key) for key in switches} == switches


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
    assert config.model_type == spec.model_type and config.num_nextn_predict_layers == 1
    assert REGISTRY[family.name].vllm_tool_parser and REGISTRY[family.name].vllm_reasoning_parser
