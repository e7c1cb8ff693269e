"""GLM-4.7 (`glm4_moe`) and GLM-4.7-Flash (`glm4_moe_lite`, MLA); the record `FAMILY`.

Format (verified against GLM-4.7-Flash's shipped chat_template.jinja; GLM-4.7's file matches it in content): no
newlines around the role tags; a turn's reasoning renders as `<think>…</think>` (stripped) when it comes after the
last user turn or `clear_thinking=false`, else a bare `</think>`; calls as `<tool_call>name<arg_key>k</arg_key>
<arg_value>v</arg_value></tool_call>`; results as `<|observation|><tool_response>…</tool_response>`; the generation
prompt is `<|assistant|><think>` (thinking on) or `<|assistant|></think>`.

Thinking (`[data] thinking`): "template", the default, renders as the template does at inference (thinking on,
`clear_thinking` on): the reasoning of the turns after the last user message is trained (not the `<think>` the
generation prompt writes), earlier turns keep only their answers, as the model will see its history. "keep"
(`clear_thinking=false`) trains every turn's reasoning, for agent data whose history keeps reasoning at inference
too. "off" trains thinking-off replies (`</think>` opens each turn, untrained; reasoning dropped).
"""

from __future__ import annotations

from glmtune.families import think_xml, think_xml_template
from glmtune.families.base import TinySpec
from glmtune.families.glm4 import MLA_TARGETS, MOE_TARGETS, SPLIT_PATTERN, TINY_MLA_MOE_SIZES

FORMAT = think_xml.ThinkXmlFormat(
    family="glm4_7",
    role_newline=False,
    nothink_suffix=False,
    hidden_think="</think>",
    prompt_think=("<think>", "</think>"),
    raw_reasoning=False,
    tools_as_functions=False,
)
# GLM-4.7-Flash's config.json (../shared/assets/glm-models/glm-4.7-flash/config.json) scaled down: every switch as
# shipped, sizes shrunk (2 layers: one dense, one MoE; 4 routed experts; MLA ranks and head dims quartered).
# GLM-4.7 itself is glm4_moe with GLM-4.5's architecture (its config was not found), covered by tiny-glm4.5.
TINY_CONFIG = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "topk_method": "noaux_tc",
    "norm_topk_prob": True,
    "n_group": 1,
    "topk_group": 1,
    "n_shared_experts": 1,
    "routed_scaling_factor": 1.8,
    "partial_rotary_factor": 1.0,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000,
    "num_nextn_predict_layers": 1,
    **TINY_MLA_MOE_SIZES,
    "v_head_dim": 64,
}
TINY = (
    TinySpec(
        "tiny-glm4.7-flash",
        "native",
        model_type="glm4_moe_lite",
        config=TINY_CONFIG,
        split_pattern=SPLIT_PATTERN,
        source="glm-4.7-flash/config.json",
    ),
)

FAMILY = think_xml_template.think_xml_family(
    FORMAT,
    model_types=("glm4_moe", "glm4_moe_lite"),
    markers=("<arg_key>", "clear_thinking"),
    lacks=("defer_loading", "Reasoning Effort", "/nothink"),
    name="glm4_7",
    title="GLM-4.7, GLM-4.7-Flash",
    lora_targets={"glm4_moe": MOE_TARGETS, "glm4_moe_lite": MLA_TARGETS},
    tiny=TINY,
    vllm_tool_parser="glm47",
)
