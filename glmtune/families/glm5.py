"""GLM-5 and GLM-5.1 (`glm_moe_dsa`: MLA with the DSA indexer); the record `FAMILY`.

Format (verified against GLM-5.1's shipped chat_template.jinja; GLM-5's own template was not found, and a GLM-5
folder whose template lacks GLM-5.1's markers is refused rather than guessed): GLM-4.7's compact format, but tools
are listed as bare function objects (`defer_loading` tools left out, `defer_loading`/`strict` keys dropped);
reasoning is rendered as given (not stripped); a turn after the last user turn without reasoning still shows an
empty `<think></think>` (with thinking on), as do earlier turns of a round that carries `reasoning_content`
when `clear_thinking=false`; a hidden turn is a bare `</think>`; prompt `<|assistant|><think>` or `</think>`.

Thinking (`[data] thinking`): "template", the default, renders as the template does at inference (thinking on,
`clear_thinking` on): the reasoning after the last user message is trained, earlier turns keep their answers
only. "keep" (`clear_thinking=false`) trains every turn's reasoning; "off" trains thinking-off replies.
"""

from __future__ import annotations

from glmtune.families import think_xml, think_xml_template
from glmtune.families.base import TinySpec
from glmtune.families.glm4 import MLA_TARGETS, SPLIT_PATTERN, TINY_MLA_MOE_SIZES

FORMAT = think_xml.ThinkXmlFormat(
    family="glm5",
    role_newline=False,
    nothink_suffix=False,
    hidden_think="</think>",
    prompt_think=("<think>", "</think>"),
    raw_reasoning=True,
    tools_as_functions=True,
    empty_recent_reasoning=True,
)

# GLM-5.1's config.json (../shared/assets/glm-models/glm-5.1/config.json) scaled down: every switch as shipped
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
    "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"},
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "num_nextn_predict_layers": 1,
    "use_cache": True,
    **TINY_MLA_MOE_SIZES,
    "head_dim": 16,
    "v_head_dim": 64,
    "index_head_dim": 32,
    "index_n_heads": 2,
    "index_topk": 16,
}
TINY = (
    TinySpec(
        "tiny-glm5.1",
        "native",
        model_type="glm_moe_dsa",
        config=TINY_CONFIG,
        split_pattern=SPLIT_PATTERN,
        source="glm-5.1/config.json",
    ),
)

FAMILY = think_xml_template.think_xml_family(
    FORMAT,
    model_types=("glm_moe_dsa",),
    markers=("<arg_key>", "defer_loading", "thinking_indices"),
    lacks=("Reasoning Effort",),
    name="glm5",
    title="GLM-5, GLM-5.1",
    lora_targets={"glm_moe_dsa": MLA_TARGETS},
    tiny=TINY,
    vllm_tool_parser="glm47",
)
