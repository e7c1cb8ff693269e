"""GLM-5.2 (`glm_moe_dsa`, shared indexers, 1M positions); the record `FAMILY`.

Format (verified against the shipped chat_template.jinja): GLM-5.1's, but the prompt opens with a
`<|system|>Reasoning Effort: Max` turn unless thinking is off (glmtune renders the default effort, Max); every
assistant turn shows a think block: `<think>…</think>` (reasoning as given) after the last user turn or with
`clear_thinking=false`, else an empty `<think></think>`; the generation prompt is `<|assistant|><think>`, or
`<|assistant|><think></think>` with thinking off.

Thinking (`[data] thinking`): "template", the default, renders as the template does at inference (thinking on,
`clear_thinking` on): the reasoning after the last user message is trained, earlier turns keep their answers
only (their empty blocks untrained). "keep" (`clear_thinking=false`) trains every turn's reasoning; "off" trains
thinking-off replies (no Reasoning Effort turn, reasoning dropped).
"""

from __future__ import annotations

from glmtune.families import think_xml, think_xml_template
from glmtune.families.base import TinySpec
from glmtune.families.glm4 import MLA_TARGETS, SPLIT_PATTERN, TINY_MLA_MOE_SIZES

FORMAT = think_xml.ThinkXmlFormat(
    family="glm5_2",
    role_newline=False,
    nothink_suffix=False,
    hidden_think="<think></think>",
    prompt_think=("<think>", "<think></think>"),
    raw_reasoning=True,
    tools_as_functions=True,
    effort_system=True,
)

# GLM-5.2's config.json (../shared/assets/glm-models/glm-5.2/config.json) scaled down: every switch as shipped
# (MLA, the DSA indexer, sigmoid routing), sizes shrunk (2 layers: one
# dense, one MoE; 4 routed experts; MLA ranks, head dims and the indexer quartered or less).
TINY_CONFIG = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "ep_size": 1,
    "indexer_rope_interleave": True,
    "rope_interleave": True,
    "moe_layer_freq": 1,
    "n_group": 1,
    "topk_group": 1,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 8000000, "rope_type": "default"},
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "num_nextn_predict_layers": 1,
    "use_cache": True,
    "index_share_for_mtp_iteration": True,
    "index_skip_topk_offset": 3,
    "index_topk_freq": 4,
    "moe_router_dtype": "float32",
    "indexer_types": ["full", "shared"],  # the shipped schedule's full-then-shared pattern
    "mlp_layer_types": ["dense", "sparse"],
    **TINY_MLA_MOE_SIZES,
    "head_dim": 16,
    "v_head_dim": 64,
    "index_head_dim": 32,
    "index_n_heads": 2,
    "index_topk": 16,
}
TINY = (
    TinySpec(
        "tiny-glm5.2",
        "native",
        model_type="glm_moe_dsa",
        config=TINY_CONFIG,
        split_pattern=SPLIT_PATTERN,
        source="glm-5.2/config.json",
    ),
)

FAMILY = think_xml_template.think_xml_family(
    FORMAT,
    model_types=("glm_moe_dsa",),
    markers=("<arg_key>", "Reasoning Effort", "enable_thinking"),
    name="glm5_2",
    title="GLM-5.2",
    lora_targets={"glm_moe_dsa": MLA_TARGETS},
    tiny=TINY,
    vllm_tool_parser="glm47",
)
