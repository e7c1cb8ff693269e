"""The Jinja chat template of the `<think>` + XML format, generated from a `ThinkXmlFormat`: what a family record
carries for tokenizers that ship none (exports, tiny folders). Tested equal, as text, to `think_xml.layout`."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from glmtune.families import think_xml
from glmtune.families.base import Family, Signature
from glmtune.families.think_xml import ThinkXmlFormat, tools_text


def chat_template(fmt: ThinkXmlFormat) -> str:
    """A Jinja chat template equivalent to `layout` (for tokenizers that ship none), written for this format; it
    reads OpenAI messages (`tool`/`observation` results, `reasoning_content`, `tool_calls`) and `tools`."""
    nl = "\\n" if fmt.role_newline else ""
    return "".join(
        [
            "[gMASK]<sop>{%- set think_on = enable_thinking is not defined or enable_thinking -%}",
            "{%- set keep = clear_thinking is defined and not clear_thinking -%}",
            _effort_jinja(fmt),
            _tools_jinja(fmt),
            "{%- set ns = namespace(last_user=-1, rounds='', round=-1) -%}{%- for m in messages -%}",
            "{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- elif m.role == 'assistant' and "
            "m.reasoning_content is string -%}{%- set ns.rounds = ns.rounds ~ ',' ~ ns.last_user ~ ',' -%}"
            "{%- endif -%}{%- endfor -%}{%- for m in messages -%}",
            f"{{%- if m.role == 'user' -%}}{{%- set ns.round = loop.index0 -%}}<|user|>{{{{ '{nl}' + m.content }}}}",
            "{%- if not think_on and not m.content.endswith('/nothink') -%}/nothink{%- endif -%}"
            if fmt.nothink_suffix
            else "",
            f"{{%- elif m.role == 'system' -%}}<|system|>{{{{ '{nl}' + m.content }}}}",
            "{%- elif m.role in ['tool', 'observation'] -%}{%- if loop.first or messages[loop.index0 - 1].role not "
            "in ['tool', 'observation'] -%}<|observation|>{%- endif -%}"
            f"{{{{ '{nl}<tool_response>{nl}' + m.content + '{nl}</tool_response>' }}}}",
            "{%- elif m.role == 'assistant' -%}<|assistant|>",
            _assistant_jinja(fmt),
            "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}<|assistant|>",
            f"{{{{ '{_escaped(fmt.prompt_think[0])}' if think_on else '{_escaped(fmt.prompt_think[1])}' }}}}",
            "{%- endif -%}",
        ]
    )


def _escaped(text: str) -> str:
    return text.replace("\n", "\\n")


def _effort_jinja(fmt: ThinkXmlFormat) -> str:
    if not fmt.effort_system:
        return ""
    effort = "<|system|>Reasoning Effort: Max"
    return f"{{%- if think_on -%}}{effort}{{%- endif -%}}" if fmt.effort_needs_thinking else effort


def _tools_jinja(fmt: ThinkXmlFormat) -> str:
    head, tail = tools_text(fmt, ()).split("<tools>\n")
    if fmt.tools_as_functions:
        line = (
            "{%- set f = tool['function'] if 'function' in tool else tool -%}{%- if not f.defer_loading -%}"
            "{{ '{' }}{%- for k, v in f.items() if k not in ['defer_loading', 'strict'] -%}"
            "{{ ', ' if not loop.first else '' }}\"{{ k }}\": {{ v | tojson(ensure_ascii=False) }}{%- endfor -%}"
            "{{ '}\\n' }}{%- endif -%}"
        )
    else:
        line = "{{ tool | tojson(ensure_ascii=False) + '\\n' }}"
    return (
        f"{{%- if tools -%}}<|system|>{{{{ {json.dumps(head + '<tools>' + chr(10))} }}}}"
        f"{{%- for tool in tools -%}}{line}{{%- endfor -%}}{{{{ {json.dumps(tail)} }}}}{{%- endif -%}}"
    )


def _assistant_jinja(fmt: ThinkXmlFormat) -> str:
    nl = "\\n" if fmt.role_newline else ""
    if fmt.raw_reasoning:
        parse = (
            "{%- set r.text = content.split('</think>')[0].split('<think>')[-1] -%}"
            "{%- set content = content.split('</think>')[-1] -%}"
        )
        shown, text = "r.text is not none", "r.text"
    else:
        parse = (
            "{%- set r.text = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}"
            "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
        )
        shown, text = "r.text", "r.text.strip()"
    implied = (
        "{%- if r.text is none and ((loop.index0 > ns.last_user and think_on) or (loop.index0 < ns.last_user and "
        "ns.round >= 0 and (',' ~ ns.round ~ ',') in ns.rounds)) -%}{%- set r.text = '' -%}{%- endif -%}"
        if fmt.empty_recent_reasoning
        else ""
    )
    calls = (
        "{%- for tc in m.tool_calls or [] -%}{%- set tc = tc.function if tc.function is defined else tc -%}"
        f"{{{{ '{nl}<tool_call>' + tc.name + '{nl}' }}}}{{%- for k, v in tc.arguments.items() -%}}"
        f"{{{{ '<arg_key>' + k + '</arg_key>{nl}<arg_value>' + (v if v is string else v | tojson(ensure_ascii=False))"
        f" + '</arg_value>{nl}' }}}}{{%- endfor -%}}</tool_call>{{%- endfor -%}}"
    )
    return (
        "{%- set content = m.content -%}{%- set r = namespace(text=none) -%}"
        "{%- if m.reasoning_content is string -%}{%- set r.text = m.reasoning_content -%}"
        f"{{%- elif '</think>' in content -%}}{parse}{{%- endif -%}}{implied}"
        f"{{%- if (keep or loop.index0 > ns.last_user) and {shown} -%}}{{{{ '{nl}<think>' + {text} + '</think>' }}}}"
        f"{{%- else -%}}{{{{ '{nl}{fmt.hidden_think}' }}}}{{%- endif -%}}"
        f"{{%- if content.strip() -%}}{{{{ '{nl}' + content.strip() }}}}{{%- endif -%}}{calls}"
    )


def think_xml_family(
    fmt: ThinkXmlFormat,
    model_types: tuple[str, ...],
    markers: tuple[str, ...],
    lacks: tuple[str, ...] = (),
    **fields: Any,
) -> Family:
    """The record of a GLM-4.5+ family from its format: what all of them share (the added tokens, stop tokens,
    layout, this module's Jinja, reply parsers, vLLM's reasoning parser) plus the family's own `fields` (name, title,
    LoRA targets, tiny checkpoints, ...). Detection: glmtune's own tiny folders by their exact template; official
    folders by `model_types` and the template `markers` (and what it `lacks`) only this release has."""
    template = chat_template(fmt)
    detection = (
        Signature(model_types=model_types, template_is=template),
        Signature(model_types=model_types, template_markers=markers, template_lacks=lacks),
    )
    return Family(
        special_tokens=think_xml.ADDED_TOKENS,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        stop_tokens=think_xml.STOP_TOKENS,
        layout=partial(think_xml.layout, fmt),
        chat_template=template,
        detection=detection,
        turn_end_note=think_xml.TURN_END_NOTE,
        parse_reply=think_xml.parse_reply,
        partial_reply=think_xml.partial_reply,
        vllm_reasoning_parser="glm45",
        **fields,
    )
