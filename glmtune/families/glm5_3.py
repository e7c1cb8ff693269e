"""GLM-5.3-Flash (`glm5_next`), its text model; the record `FAMILY`.

Format (verified against the first published chat_template.jinja, Hub revision c5b82b63; the two later revisions
were not found, see the README support notes): GLM-5.2's, with no thinking switch: the prompt always opens with
`<|system|>Reasoning Effort: Max` (glmtune renders the default effort) and the generation prompt is always
`<|assistant|><think>`. The template reorders parallel tool results by `tool_call_id`; glmtune's messages carry
no ids, so results render in the order given, which is the template's order when ids are absent.

Thinking (`[data] thinking`): "template", the default, renders as the template does at inference (`clear_thinking`
on): the reasoning after the last user message is trained, earlier turns keep their answers only. "keep"
(`clear_thinking=false`) trains every turn's reasoning. "off" is refused: this model always thinks.
"""

from __future__ import annotations

from glmtune.families import think_xml, think_xml_template
from glmtune.families.base import TinySpec
from glmtune.families.glm4 import MLA_TARGETS, SPLIT_PATTERN

FORMAT = think_xml.ThinkXmlFormat(
    family="glm5_3",
    role_newline=False,
    nothink_suffix=False,
    hidden_think="<think></think>",
    prompt_think=("<think>", "<think>"),
    raw_reasoning=True,
    tools_as_functions=True,
    effort_system=True,
    effort_needs_thinking=False,
    has_thinking_switch=False,
)

# transformers ships `glm5_next` only as Glm5NextForConditionalGeneration: a vision tower and the text model, built
# by AutoModelForImageTextToText. glmtune trains and generates text through it (input_ids in, logits out); the
# vision tower stays frozen and unadapted. Its layers alternate two attention kinds: KDA linear attention
# (`q/k/v_proj`, gates, a short convolution) and MLA with the DSA indexer (NoPE: no rotary dims), both adapted.
AUTO_CLASS = "AutoModelForImageTextToText"
LINEAR_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj")
TARGETS = LINEAR_ATTENTION_TARGETS + MLA_TARGETS
# No config.json of GLM-5.3-Flash was found; this scales down transformers 5.24's Glm5NextTextConfig defaults (its
# "GLM-5.3-Flash style" configuration, which the flat text-only checkpoints fill at the top level, as here): every
# switch as shipped (hyper-connections hc_mult 4, KDA linear attention, DSA indexer with key pooling, sigmoid MoE
# with a shared expert, SwiGLU clamp), sizes shrunk. 2 layers where the default schedule has 45: one dense KDA
# layer, one MoE MLA+indexer layer, so each layer kind runs. The vision tower is the smallest that builds (1 block,
# width 32); its output width is the text width, as a real one would be.
TINY_CONFIG = {
    "layer_types": ["linear_attention", "indexed_attention"],
    "mlp_layer_types": ["dense", "sparse"],
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "moe_intermediate_size": 128,
    "routed_scaling_factor": 2.5,
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": True,
    "hidden_act": "silu",
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 0,
    "v_head_dim": 64,
    "index_topk": 16,
    "index_head_dim": 32,
    "index_n_heads": 2,
    "index_kpool": 4,
    "index_kpool_always_select_tail": True,
    "linear_num_heads": 4,
    "linear_head_dim": 64,
    "linear_conv_kernel_dim": 4,
    "linear_lower_bound": -5.0,
    "hc_mult": 4,
    "hc_sinkhorn_iters": 20,
    "swiglu_limit": 10.0,
    "rms_norm_eps": 1e-05,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hc_eps": 1e-06,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
    "use_cache": True,
    "vision_config": {
        "depth": 1,
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 64,
        "projection_intermediate_size": 64,
        "out_hidden_size": 256,
    },
}
TINY = (
    TinySpec(
        "tiny-glm5.3-flash",
        "native",
        model_type="glm5_next",
        config=TINY_CONFIG,
        split_pattern=SPLIT_PATTERN,
    ),
)

FAMILY = think_xml_template.think_xml_family(
    FORMAT,
    model_types=("glm5_next",),
    markers=("<arg_key>", "Reasoning Effort"),
    lacks=("enable_thinking",),
    name="glm5_3",
    title="GLM-5.3-Flash (text)",
    lora_targets={"glm5_next": TARGETS},
    auto_class=AUTO_CLASS,
    tiny=TINY,
    cannot_pack="its KDA linear-attention layers carry a recurrent state along the whole row, and its attention "
    "takes a padding mask only, so packed samples would read each other",
    vllm_tool_parser="glm47",
)
