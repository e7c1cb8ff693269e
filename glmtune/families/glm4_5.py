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

from collections.abc import Sequence

from glmtune.families import think_xml, think_xml_template
from glmtune.families.base import Family, Message, Piece, RenderOptions, Signature

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
# GLM-4.5 (glm4_moe): LoRA on attention and the MLP projections; in transformers 5 the routed experts are fused 3-D
# parameters that peft maps gate/up/down_proj onto, leaving the dense first layers and shared experts unadapted.
MOE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _layout(messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    return think_xml.layout(FORMAT, messages, options)


FAMILY = Family(
    name="glm4_5",
    title="GLM-4.5, GLM-4.5-Air, GLM-4.6",
    special_tokens=think_xml.ADDED_TOKENS,
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    stop_tokens=think_xml.STOP_TOKENS,
    layout=_layout,
    chat_template=think_xml_template.chat_template(FORMAT),
    detection=(
        Signature(
            model_types=("glm4_moe",),
            template_markers=("<arg_key>", "/nothink"),
            template_lacks=("clear_thinking",),
        ),
    ),
    lora_targets={"glm4_moe": MOE_TARGETS},
    turn_end_note=think_xml.TURN_END_NOTE,
    parse_reply=think_xml.parse_reply,
)
