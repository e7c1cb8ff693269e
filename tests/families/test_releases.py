"""GLM-4.5 … GLM-5.3-Flash: each family's rendering equals, as text, the checkpoint's own chat_template.jinja
(rendered with jinja2 the way transformers does), detection from the shipped files, stop tokens by name.

Uses the official files in the shared assets (../shared/assets/glm-models or GLMTUNE_SHARED_ASSETS) and skips
without them; templates are copied only into pytest's tmp folders.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from conftest import SHARED_ASSETS
from release_conversations import CONVERSATIONS, TEMPLATES, option_grid, template_text

from glmtune.errors import UsageError
from glmtune.families import detect_family, get_family
from glmtune.families.think_xml import ADDED_TOKENS

MISSING_SWITCH = {"glm4_5": "clear_thinking", "glm5_3": "enable_thinking"}  # the switch each template lacks


def _asset(*parts: str):
    path = SHARED_ASSETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"official GLM files not found at {path} (../shared beside the repo, or GLMTUNE_SHARED_ASSETS)"
        )
    return path


def _layout_text(family, messages, options) -> str:
    pieces = family.layout(messages, options)
    assert all(not p.appended for p in pieces[:-1]), "only the last piece may be appended"
    return "".join(p.text for p in pieces if not p.appended)


@pytest.mark.parametrize("folder", sorted(TEMPLATES))
def test_rendering_equals_the_official_template(folder):
    template = _asset(folder, "chat_template.jinja").read_text(encoding="utf-8")
    family = get_family(TEMPLATES[folder])
    compared = 0
    for name, (messages, tools) in CONVERSATIONS.items():
        for options in option_grid(messages, tools):
            expected = template_text(template, messages, options)
            try:
                text = _layout_text(family, messages, options)
            except UsageError:
                # refused only where the template has no such switch: it renders the same with the switch on
                default = replace(options, **{MISSING_SWITCH[family.name]: True})
                assert expected == template_text(template, messages, default), (folder, name, options)
                continue
            assert text == expected, f"{folder} {name} {options}"
            compared += 1
    assert compared >= 2 * len(CONVERSATIONS)


@pytest.mark.parametrize(
    ("folder", "family"),
    [("glm-4.5", "glm4_5"), ("glm-4.7-flash", "glm4_7"), ("glm-5.1", "glm5"), ("glm-5.2", "glm5_2")],
)
def test_shipped_folders_are_detected(folder, family):
    assert detect_family(_asset(folder)).name == family


@pytest.mark.parametrize(
    ("folder", "model_type", "family"),
    [("glm-4.5-air", "glm4_moe", "glm4_5"), ("glm-4.6", "glm4_moe", "glm4_5"), ("glm-4.7", "glm4_moe", "glm4_7"),
     ("glm-5.3-flash", "glm5_next", "glm5_3")],
)  # fmt: skip
def test_template_only_folders_are_detected_with_their_model_type(tmp_path, folder, model_type, family):
    shutil.copy(_asset(folder, "chat_template.jinja"), tmp_path / "chat_template.jinja")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert detect_family(tmp_path).name == family


def test_glm4_moe_with_glm45_template_never_renders_as_glm4(tmp_path):
    shutil.copy(_asset("glm-4.5", "chat_template.jinja"), tmp_path / "chat_template.jinja")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "glm4_moe"}))
    assert detect_family(tmp_path).name == "glm4_5"


def test_unknown_template_and_missing_template_are_refused_naming_model_family(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "glm4_moe_lite"}))
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    )
    with pytest.raises(UsageError, match="model.family"):
        detect_family(tmp_path)
    with pytest.raises(UsageError, match="model.family"):
        detect_family(_asset("glm-5"))  # GLM-5's own template was not found: refused, not guessed


@pytest.mark.parametrize("folder", ["glm-4.5", "glm-4.7-flash"])
def test_special_tokens_and_stop_ids_match_the_shipped_tokenizer(folder):
    tokenizer_config = json.loads(_asset(folder, "tokenizer_config.json").read_text())
    ids = {entry["content"]: int(i) for i, entry in tokenizer_config["added_tokens_decoder"].items()}
    assert list(ids) == list(ADDED_TOKENS)
    assert sorted(ids.values()) == list(range(min(ids.values()), min(ids.values()) + len(ADDED_TOKENS)))
    family = detect_family(_asset(folder))
    stop_ids = [ids[name] for name in family.stop_tokens]
    assert stop_ids == json.loads(_asset(folder, "config.json").read_text())["eos_token_id"]
    assert stop_ids == json.loads(_asset(folder, "generation_config.json").read_text())["eos_token_id"]


def test_glm5_stop_ids_are_the_glm47_flash_tokenizer_ids():
    # GLM-5.x ship GLM-4.7-Flash's tokenizer.json (same sha256, PROVENANCE.md): its added-token ids apply.
    flash = json.loads(_asset("glm-4.7-flash", "tokenizer_config.json").read_text())["added_tokens_decoder"]
    ids = {entry["content"]: int(i) for i, entry in flash.items()}
    for folder, name in (("glm-5", "glm5"), ("glm-5.1", "glm5"), ("glm-5.2", "glm5_2")):
        expected = [ids[t] for t in get_family(name).stop_tokens]
        assert (
            json.loads(_asset(folder, "config.json").read_text())["eos_token_id"]
            == expected
            == [154820, 154827, 154829]
        )
    for folder in ("glm-5.2", "glm-5.3-flash"):
        generation = json.loads(_asset(folder, "generation_config.json").read_text())
        assert generation["eos_token_id"] == [ids[t] for t in get_family("glm5_3").stop_tokens]


@pytest.mark.parametrize("name", sorted(set(TEMPLATES.values())))
def test_the_records_own_jinja_template_equals_its_layout(name):
    # for tokenizers that ship no template (glmtune writes it into exports and tiny folders); no ../shared needed
    family = get_family(name)
    for conversation, (messages, tools) in CONVERSATIONS.items():
        for options in option_grid(messages, tools):
            try:
                text = _layout_text(family, messages, options)
            except UsageError:
                continue
            assert template_text(family.chat_template, messages, options) == text, (
                name,
                conversation,
                options,
            )
