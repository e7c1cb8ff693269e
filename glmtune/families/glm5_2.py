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
from glmtune.families.base import Family, Message, Piece, RenderOptions, Signature
from glmtune.families.glm4_7 import MLA_TARGETS

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
    chat_template=think_xml_template.chat_template(FORMAT),
    detection=(
        Signature(
            model_types=("glm_moe_dsa",),
            template_markers=("<arg_key>", "Reasoning Effort", "enable_thinking"),
        ),
    ),
    lora_targets={"glm_moe_dsa": MLA_TARGETS},
    turn_end_note=think_xml.TURN_END_NOTE,
    parse_reply=think_xml.parse_reply,
)
