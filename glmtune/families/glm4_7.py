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

from collections.abc import Sequence

from glmtune.families import think_xml, think_xml_template
from glmtune.families.base import Family, Message, Piece, RenderOptions, Signature, TinySpec
from glmtune.families.glm4 import MLA_TARGETS, MOE_TARGETS, SPLIT_PATTERN

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
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "first_k_dense_replace": 1,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 128,
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 48,
    "qk_rope_head_dim": 16,
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

CHAT_TEMPLATE = think_xml_template.chat_template(FORMAT)


def _layout(messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    return think_xml.layout(FORMAT, messages, options)


FAMILY = Family(
    name="glm4_7",
    title="GLM-4.7, GLM-4.7-Flash",
    special_tokens=think_xml.ADDED_TOKENS,
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    stop_tokens=think_xml.STOP_TOKENS,
    layout=_layout,
    chat_template=CHAT_TEMPLATE,
    detection=(
        Signature(
            model_types=("glm4_moe", "glm4_moe_lite"), template_is=CHAT_TEMPLATE
        ),  # glmtune's tiny folders
        Signature(
            model_types=("glm4_moe", "glm4_moe_lite"),
            template_markers=("<arg_key>", "clear_thinking"),
            template_lacks=("defer_loading", "Reasoning Effort", "/nothink"),
        ),
    ),
    lora_targets={"glm4_moe": MOE_TARGETS, "glm4_moe_lite": MLA_TARGETS},
    turn_end_note=think_xml.TURN_END_NOTE,
    tiny=TINY,
    parse_reply=think_xml.parse_reply,
    partial_reply=think_xml.partial_reply,
    vllm_tool_parser="glm47",
    vllm_reasoning_parser="glm45",
)
