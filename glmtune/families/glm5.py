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

from collections.abc import Sequence

from glmtune.families import think_xml, think_xml_template
from glmtune.families.base import Family, Message, Piece, RenderOptions, Signature
from glmtune.families.glm4_7 import MLA_TARGETS

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


def _layout(messages: Sequence[Message], options: RenderOptions) -> list[Piece]:
    return think_xml.layout(FORMAT, messages, options)


FAMILY = Family(
    name="glm5",
    title="GLM-5, GLM-5.1",
    special_tokens=think_xml.ADDED_TOKENS,
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    stop_tokens=think_xml.STOP_TOKENS,
    layout=_layout,
    chat_template=think_xml_template.chat_template(FORMAT),
    detection=(
        Signature(
            model_types=("glm_moe_dsa",),
            template_markers=("<arg_key>", "defer_loading", "thinking_indices"),
            template_lacks=("Reasoning Effort",),
        ),
    ),
    lora_targets={"glm_moe_dsa": MLA_TARGETS},
    turn_end_note=think_xml.TURN_END_NOTE,
    parse_reply=think_xml.parse_reply,
)
