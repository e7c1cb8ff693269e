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
from glmtune.families.base import Family, Message, Piece, RenderOptions, Signature
from glmtune.families.glm4_5 import MOE_TARGETS

FORMAT = think_xml.ThinkXmlFormat(
    family="glm4_7",
    role_newline=False,
    nothink_suffix=False,
    hidden_think="</think>",
    prompt_think=("<think>", "</think>"),
    raw_reasoning=False,
    tools_as_functions=False,
)
# GLM-4.7-Flash (glm4_moe_lite) attends with MLA: low-rank query and key/value projections instead of q/k/v_proj.
MLA_TARGETS = (
    "q_a_proj",
    "q_b_proj",
    "kv_a_proj_with_mqa",
    "kv_b_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


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
    chat_template=think_xml_template.chat_template(FORMAT),
    detection=(
        Signature(
            model_types=("glm4_moe", "glm4_moe_lite"),
            template_markers=("<arg_key>", "clear_thinking"),
            template_lacks=("defer_loading", "Reasoning Effort", "/nothink"),
        ),
    ),
    lora_targets={"glm4_moe": MOE_TARGETS, "glm4_moe_lite": MLA_TARGETS},
    turn_end_note=think_xml.TURN_END_NOTE,
    parse_reply=think_xml.parse_reply,
)
