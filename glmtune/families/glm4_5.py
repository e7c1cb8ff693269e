"""GLM-4.5, GLM-4.5-Air and GLM-4.6 (`glm4_moe`, zai-org's chat_template.jinja); the record `FAMILY`.

Format (verified against the shipped template, byte-identical for the three): a newline after every role tag;
assistant turns open with `\\n<think>…</think>` (an empty `\\n<think></think>` for every turn before the last user
turn and for turns without reasoning), then `\\ncontent`, then each call as `\\n<tool_call>name\\n<arg_key>k</arg_key>\\n
<arg_value>v</arg_value>\\n</tool_call>`; results as `<|observation|>\\n<tool_response>\\n…\\n</tool_response>`; with
`enable_thinking=false` every user turn ends with `/nothink` and the generation prompt is `<|assistant|>\\n<think></think>`.

Thinking (`[data] thinking`): "template", the default, trains each turn as the template renders it at inference
with thinking on: the reasoning of the turns after the last user message (with its `\\n<think>` and `</think>`, which
GLM-4.5 writes itself), and no reasoning for earlier turns, whose history the template always clears, so the
model learns from the contexts it will see. "off" trains thinking-off replies (reasoning dropped, `/nothink` on
the user turns, the empty block untrained). "keep" is refused: this template has no `clear_thinking`.
"""

from __future__ import annotations

from glmtune.families import think_xml, think_xml_template
from glmtune.families.base import TinySpec
from glmtune.families.glm4 import MOE_TARGETS, SPLIT_PATTERN

FORMAT = think_xml.ThinkXmlFormat(
    family="glm4_5",
    role_newline=True,
    nothink_suffix=True,
    hidden_think="<think></think>",
    prompt_think=("", "\n<think></think>"),
    raw_reasoning=False,
    tools_as_functions=False,
    has_clear_thinking=False,
)
# GLM-4.5's config.json (../shared/assets/glm-models/glm-4.5/config.json) scaled down: every switch as shipped,
# sizes shrunk (2 layers: one dense, one MoE; 4 routed experts).
TINY_CONFIG = {
    "attention_bias": True,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "partial_rotary_factor": 0.5,
    "use_qk_norm": True,
    "norm_topk_prob": True,
    "n_group": 1,
    "topk_group": 1,
    "n_shared_experts": 1,
    "routed_scaling_factor": 2.5,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000,
    "num_nextn_predict_layers": 1,
    "use_cache": True,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "first_k_dense_replace": 1,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 128,
}
TINY = (
    TinySpec(
        "tiny-glm4.5",
        "native",
        model_type="glm4_moe",
        config=TINY_CONFIG,
        split_pattern=SPLIT_PATTERN,
        source="glm-4.5/config.json",
    ),
)

FAMILY = think_xml_template.think_xml_family(
    FORMAT,
    model_types=("glm4_moe",),
    markers=("<arg_key>", "/nothink"),
    lacks=("clear_thinking",),
    name="glm4_5",
    title="GLM-4.5, GLM-4.5-Air, GLM-4.6",
    lora_targets={"glm4_moe": MOE_TARGETS},
    tiny=TINY,
    vllm_tool_parser="glm45",
)
