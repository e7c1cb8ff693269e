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

from collections.abc import Sequence

from glmtune.families import think_xml, think_xml_template
from glmtune.families.base import Family, Message, Piece, RenderOptions, Signature, TinySpec
from glmtune.families.glm4 import MLA_TARGETS, SPLIT_PATTERN

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

CHAT_TEMPLATE = think_xml_template.chat_template(FORMAT)


def _layout(messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    return think_xml.layout(FORMAT, messages, options)


FAMILY = Family(
    name="glm5_2",
    title="GLM-5.2",
    special_tokens=think_xml.ADDED_TOKENS,
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    stop_tokens=think_xml.STOP_TOKENS,
    layout=_layout,
    chat_template=CHAT_TEMPLATE,
    detection=(
        Signature(model_types=("glm_moe_dsa",), template_is=CHAT_TEMPLATE),  # glmtune's tiny folders
        Signature(
            model_types=("glm_moe_dsa",),
            template_markers=("<arg_key>", "Reasoning Effort", "enable_thinking"),
        ),
    ),
    lora_targets={"glm_moe_dsa": MLA_TARGETS},
    turn_end_note=think_xml.TURN_END_NOTE,
    tiny=TINY,
    parse_reply=think_xml.parse_reply,
    partial_reply=think_xml.partial_reply,
    vllm_tool_parser="glm47",
    vllm_reasoning_parser="glm45",
)
