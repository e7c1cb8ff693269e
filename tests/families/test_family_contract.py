"""The contract every family record keeps, checked on its builtin tiny checkpoints (no ../shared needed).

Parametrised over the registry: adding a family with a `TinySpec` puts it under every test here. For each builtin
tiny folder: the layout's prompt ids equal the ids of its Jinja chat template rendered by transformers, every special
token and stop token resolves by name, the default LoRA targets match modules of the model, and detection finds
exactly this family in the folder. Detection also refuses, naming the candidates, a folder that two records claim
and one whose template no record knows.

System prompts here start with punctuation: ChatGLM2's template (glmtune's own; the checkpoint ships none) writes
the system text right after the bare-word `sop` token, which then only matches before a non-letter (a known limit
documented in glmtune/families/chatglm3.py; glmtune's own rendering has no such limit).
"""

from __future__ import annotations

import functools
import json
import shutil

import pytest

from glmtune.checkpoints.load import load_config, load_tokenizer
from glmtune.checkpoints.tiny import builtin_path
from glmtune.data.render import render_conversation, special_token_id, stop_token_ids
from glmtune.errors import UsageError
from glmtune.families import (
    REGISTRY,
    FolderFacts,
    Message,
    auto_model_class,
    candidates,
    detect_family,
    tiny_specs,
)
from glmtune.families.base import RenderOptions
from glmtune.training.method import lora_target_modules

TINY = sorted(tiny_specs())

PROMPTS = [
    [Message("user", "你好，你是谁？")],
    [Message("user", "Hello! What can you do?")],
    [Message("system", "（你是一个乐于助人的助手。）"), Message("user", "写一首诗")],
    [
        Message("user", "Q1: who made you?"),
        Message("assistant", "A1: the glmtune team."),
        Message("user", "Q2 多轮对话"),
    ],
    [
        Message("system", "(be brief)"),
        Message("user", "1+1?"),
        Message("assistant", "2"),
        Message("user", "2+2?"),
        Message("assistant", "4"),
        Message("user", "  spaces\tand\nnewlines  "),
    ],
    [
        Message("user", "天气怎么样？"),
        Message("assistant", '{"city": "北京"}', metadata="get_weather"),
        Message("observation", '{"weather": "晴"}'),
    ],
]


@functools.cache
def tiny(name: str):
    """(family, folder, tokenizer) of a builtin tiny checkpoint, built once per session (cached on disk)."""
    family, _ = tiny_specs()[name]
    folder = builtin_path(name)
    return family, folder, load_tokenizer(folder, family=family)


def fits(family, messages) -> bool:
    """Conversations the family's format can hold (ChatGLM2 and v1 have no tool calls)."""
    try:
        family.layout(messages, RenderOptions(add_generation_prompt=True))
    except UsageError:
        return False
    return True


def as_dicts(messages, template: str) -> list[dict]:
    """The messages as a template reads them: a GLM-4-style call (metadata line) stays one where the template reads
    `metadata`, else it is the OpenAI `tool_calls` it means (as the GLM-4.5+ layouts read it)."""
    if "metadata" in template:
        return [{"role": m.role, "content": m.content, "metadata": m.metadata} for m in messages]
    return [
        {
            "role": m.role,
            "content": "",
            "tool_calls": [{"function": {"name": m.metadata, "arguments": json.loads(m.content)}}],
        }
        if m.metadata
        else {"role": m.role, "content": m.content}
        for m in messages
    ]


@pytest.mark.parametrize("name", TINY)
def test_layout_equals_the_chat_template(name):
    family, _, tokenizer = tiny(name)
    checked = 0
    for messages in PROMPTS:
        if not fits(family, messages):
            continue
        text = tokenizer.apply_chat_template(
            as_dicts(messages, family.chat_template),
            chat_template=family.chat_template,
            add_generation_prompt=True,
            tokenize=False,
        )
        from_template = tokenizer.encode(text, add_special_tokens=False)
        rendered = render_conversation(messages, family, tokenizer, add_generation_prompt=True)
        assert rendered.ids == from_template, (messages, text)
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("name", TINY)
def test_the_folder_ships_the_family_template(name):
    family, folder, tokenizer = tiny(name)
    shipped = FolderFacts.read(folder).chat_template
    assert tokenizer.chat_template == (shipped or family.chat_template)


@pytest.mark.parametrize("name", TINY)
def test_special_and_stop_tokens_resolve_by_name(name):
    family, _, tokenizer = tiny(name)
    ids = {token: special_token_id(tokenizer, token) for token in family.special_tokens}
    assert len(set(ids.values())) == len(ids)
    for token, token_id in ids.items():
        assert tokenizer.convert_ids_to_tokens(token_id) == token
        # a special-token string inside user text stays text
        assert token_id not in tokenizer.encode(token, add_special_tokens=False, split_special_tokens=True)
    assert special_token_id(tokenizer, family.eos_token) == tokenizer.eos_token_id
    assert special_token_id(tokenizer, family.pad_token) == tokenizer.pad_token_id
    stops = stop_token_ids(family, tokenizer)
    assert len(stops) == len(set(stops)) == len(family.stop_tokens)


@pytest.mark.parametrize("name", TINY)
def test_lora_targets_match_modules_of_the_model(name):
    import torch

    family, folder, _ = tiny(name)
    config = load_config(folder, family=family)
    with torch.device("meta"):
        model = auto_model_class(config.model_type).from_config(config)
    assert model.config.model_type in family.lora_targets
    targets = lora_target_modules(model, family, "auto")
    assert targets == list(family.lora_targets[model.config.model_type])


@pytest.mark.parametrize("name", TINY)
def test_detection_round_trips_the_tiny_folder(name):
    family, folder, _ = tiny(name)
    assert candidates(folder) == [family]
    assert detect_family(folder) is family


def test_every_family_is_under_contract():
    covered = {family.name for family, _ in tiny_specs().values()}
    # ChatGLM-6B v1 has no builtin tiny model: its contract runs on the official tokenizer in
    # test_chatglm6b_family.py (skipped without ../shared).
    assert covered == set(REGISTRY) - {"chatglm"}


def copy_folder(name: str, target, **config_changes):
    shutil.copytree(builtin_path(name), target)
    config = json.loads((target / "config.json").read_text()) | config_changes
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_a_folder_two_records_claim_is_refused_naming_both(tmp_path):
    # ChatGLM2's files (tokenizer.model, no template) plus ChatGLM-6B v1's ice_text.model
    folder = copy_folder("tiny-chatglm2", tmp_path / "both")
    (folder / "ice_text.model").write_bytes(b"")
    with pytest.raises(UsageError, match=r"several GLM families \(chatglm2, chatglm\).*set model\.family"):
        detect_family(folder)
    stamped = copy_folder("tiny-chatglm2", tmp_path / "stamped", glmtune_family="chatglm2")
    (stamped / "ice_text.model").write_bytes(b"")
    assert detect_family(stamped).name == "chatglm2"  # glmtune's own stamp wins


def test_an_unknown_template_is_refused_naming_the_candidates(tmp_path):
    folder = copy_folder("tiny-glm4", tmp_path / "unknown")
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}"
    )
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert FolderFacts.read(folder).chat_template.startswith("{% for m")
    with pytest.raises(UsageError, match=r"no GLM family recognises it .*model\.family.*chatglm, chatglm2"):
        detect_family(folder)
