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

from collections.abc import Sequence

from glmtune.families import think_xml, think_xml_template
from glmtune.families.base import Family, Message, Piece, RenderOptions, Signature
from glmtune.families.glm4_7 import MLA_TARGETS

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


def _layout(messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    return think_xml.layout(FORMAT, messages, options)


FAMILY = Family(
    name="glm5_3",
    title="GLM-5.3-Flash (text)",
    special_tokens=think_xml.ADDED_TOKENS,
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    stop_tokens=think_xml.STOP_TOKENS,
    layout=_layout,
    chat_template=think_xml_template.chat_template(FORMAT),
    detection=(
        Signature(
            model_types=("glm5_next",),
            template_markers=("<arg_key>", "Reasoning Effort"),
            template_lacks=("enable_thinking",),
        ),
    ),
    lora_targets={"glm5_next": MLA_TARGETS},
    turn_end_note=think_xml.TURN_END_NOTE,
    parse_reply=think_xml.parse_reply,
)
