"""The ChatGLM2 / ChatGLM3 / GLM-4-9B-chat families against the official files: golden masks written by hand, ids
equal to the original prompt builders and chat templates, and detection of each shared checkpoint folder.

Uses the real tokenizer files in the shared assets (../shared/assets/glm-models, or GLMTUNE_SHARED_ASSETS) and skips
without them. The "original" ids are computed here the way the original code does, with sentencepiece / tiktoken
directly (`original_tokenizer.reference_encode`), from these sources:
- ChatGLM3-6B tokenization_chatglm.py: build_single_message = [role] + encode(f"{metadata}\\n") + encode(content);
  build_chat_input = [gMASK, sop] + messages + [<|assistant|>]; finetune_demo/finetune_hf.py process_batch: whole
  assistant messages masked in, eos appended, mask shifted right by one.
- ChatGLM2-6B tokenization_chatglm.py build_prompt and ptuning/main.py preprocess_function_train:
  [gMASK, sop] + encode(prompt), then encode(answer) + [eos], labels on the answer and eos only.
- GLM-4-9B-chat tokenization_chatglm.py build_single_message (tiktoken), and its tokenizer_config.json chat template.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_ASSETS, runs

from glmtune.checkpoints.original import load_original_tokenizer
from glmtune.data.render import render_conversation
from glmtune.errors import UsageError
from glmtune.families import (
    CHATGLM2,
    CHATGLM3,
    GLM4,
    FolderFacts,
    Message,
    candidates,
    detect_family,
    get_family,
)
from glmtune.families.original_tokenizer import reference_encode as encode_with_spec

FOLDERS = {"chatglm3": "chatglm3-6b", "chatglm2": "chatglm2-6b", "glm4": "glm-4-9b-chat"}
FAMILIES = {"chatglm3": CHATGLM3, "chatglm2": CHATGLM2, "glm4": GLM4}
PREFIX = {"chatglm3": ["[gMASK]", "sop"], "chatglm2": ["[gMASK]", "sop"], "glm4": ["[gMASK]", "<sop>"]}


def reference_encode(folder: Path, family: str, text: str) -> list[int]:
    """The original tokenizer's ids of `text` (sentencepiece / tiktoken directly)."""
    return encode_with_spec(folder, get_family(family).original.tokenizer, text)


def asset(name: str) -> Path:
    folder = SHARED_ASSETS / name
    if not (folder / "config.json").is_file():
        pytest.skip(
            f"official GLM files not found at {folder} (../shared beside the repo, or GLMTUNE_SHARED_ASSETS)"
        )
    return folder


@pytest.fixture(scope="module", params=list(FOLDERS))
def real(request):
    """(family, tokenizer, folder) with the official tokenizer files."""
    folder = asset(FOLDERS[request.param])
    family = FAMILIES[request.param]
    return family, load_original_tokenizer(folder, family), folder


def tokenizer_of(name: str):
    return load_original_tokenizer(asset(FOLDERS[name]), FAMILIES[name])


@pytest.fixture(scope="module")
def chatglm3_tokenizer():
    return tokenizer_of("chatglm3")


@pytest.fixture(scope="module")
def chatglm2_tokenizer():
    return tokenizer_of("chatglm2")


@pytest.fixture(scope="module")
def glm4_tokenizer():
    return tokenizer_of("glm4")


SINGLE = [Message("user", "你好"), Message("assistant", "我是Glimmer。")]
MULTI = [
    Message("system", "Be brief."),
    Message("user", "Q1"),
    Message("assistant", "A1"),
    Message("user", "Q2"),
    Message("assistant", "A2"),
]
TOOL = [
    Message("user", "Weather?"),
    Message("assistant", '{"city": "Paris"}', metadata="get_weather"),
    Message("observation", '{"temp": 20}'),
    Message("assistant", "20 degrees."),
]


# ---------------------------------------------------------------------------------------------------- golden masks


def test_chatglm3_single_turn(chatglm3_tokenizer):
    rendered = render_conversation(SINGLE, CHATGLM3, chatglm3_tokenizer)
    # Each text piece carries SentencePiece's dummy prefix "▁", decoded as a space ("\n " in the chat template).
    assert runs(rendered, chatglm3_tokenizer) == [
        ("[gMASK]sop<|user|> \n 你好<|assistant|>", False),
        ("\n 我是Glimmer。</s>", True),
    ]
    assert rendered.ids[:3] == chatglm3_tokenizer.convert_tokens_to_ids(["[gMASK]", "sop", "<|user|>"])
    assert (
        rendered.ids[-1]
        == chatglm3_tokenizer.convert_tokens_to_ids("</s>")
        == chatglm3_tokenizer.eos_token_id
    )


def test_chatglm3_multi_turn_with_system(chatglm3_tokenizer):
    assert runs(render_conversation(MULTI, CHATGLM3, chatglm3_tokenizer), chatglm3_tokenizer) == [
        ("[gMASK]sop<|system|> \n Be brief.<|user|> \n Q1<|assistant|>", False),
        ("\n A1<|user|>", True),
        ("\n Q2<|assistant|>", False),
        ("\n A2</s>", True),
    ]


def test_chatglm3_tool_call_and_observation(chatglm3_tokenizer):
    rendered = render_conversation(TOOL, CHATGLM3, chatglm3_tokenizer)
    assert runs(rendered, chatglm3_tokenizer) == [
        ("[gMASK]sop<|user|> \n Weather?<|assistant|>", False),
        ('get_weather\n {"city": "Paris"}<|observation|>', True),
        ('\n {"temp": 20}<|assistant|>', False),
        ("\n 20 degrees.</s>", True),
    ]
    observation = chatglm3_tokenizer.convert_tokens_to_ids("<|observation|>")
    assert rendered.mask[rendered.ids.index(observation)]


def test_chatglm2_single_turn(chatglm2_tokenizer):
    rendered = render_conversation(SINGLE, CHATGLM2, chatglm2_tokenizer)
    assert runs(rendered, chatglm2_tokenizer) == [
        ("[gMASK]sop [Round 1]\n\n问：你好\n\n答：", False),
        ("我是Glimmer。</s>", True),
    ]
    assert rendered.ids[:2] == chatglm2_tokenizer.convert_tokens_to_ids(["[gMASK]", "sop"])


def test_chatglm2_multi_turn_trains_the_last_answer_and_puts_system_first(chatglm2_tokenizer):
    assert runs(render_conversation(MULTI, CHATGLM2, chatglm2_tokenizer), chatglm2_tokenizer) == [
        ("[gMASK]sop Be brief.\n\n[Round 1]\n\n问：Q1\n\n答：A1\n\n[Round 2]\n\n问：Q2\n\n答：", False),
        ("A2</s>", True),
    ]


def test_chatglm2_refuses_tool_calls(chatglm2_tokenizer):
    with pytest.raises(UsageError, match="ChatGLM2 has no tool calls"):
        render_conversation(TOOL, CHATGLM2, chatglm2_tokenizer)


def test_glm4_chat_tool_call_with_the_tiktoken_tokenizer(glm4_tokenizer):
    assert runs(render_conversation(TOOL, GLM4, glm4_tokenizer), glm4_tokenizer) == [
        ("[gMASK]<sop><|user|>\nWeather?<|assistant|>", False),
        ('get_weather\n{"city": "Paris"}<|observation|>', True),
        ('\n{"temp": 20}<|assistant|>', False),
        ("\n20 degrees.<|user|>", True),
    ]


# ------------------------------------------------------------------------------- equal to the original builders

CONVERSATION = [
    Message("system", "你是一个乐于助人的助手。"),
    Message("user", "你好，你是谁？ Who are you?"),
    Message("assistant", "我是 ChatGLM。\n  Nice to meet you!"),
    Message("user", "写一行 Python: print(1)"),
]


def single_message(folder: Path, name: str, tokenizer, message: Message) -> list[int]:
    """The original `build_single_message` (ChatGLM3 and GLM-4-9B-chat alike)."""
    role = tokenizer.convert_tokens_to_ids(f"<|{message.role}|>")
    return [
        role,
        *reference_encode(folder, name, f"{message.metadata}\n"),
        *reference_encode(folder, name, message.content),
    ]


@pytest.mark.parametrize("name", ["chatglm3", "glm4"])
def test_ids_equal_build_chat_input(name):
    family, folder = FAMILIES[name], asset(FOLDERS[name])
    tokenizer = load_original_tokenizer(folder, family)
    expected = tokenizer.convert_tokens_to_ids(PREFIX[name]) + [
        i for m in CONVERSATION for i in single_message(folder, name, tokenizer, m)
    ]
    expected.append(tokenizer.convert_tokens_to_ids("<|assistant|>"))
    assert render_conversation(CONVERSATION, family, tokenizer, add_generation_prompt=True).ids == expected


@pytest.mark.parametrize("name", ["chatglm3", "glm4"])
def test_ids_equal_the_official_chat_template(name):
    family, folder = FAMILIES[name], asset(FOLDERS[name])
    tokenizer = load_original_tokenizer(folder, family)
    official = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    assert tokenizer.chat_template == official
    theirs = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in CONVERSATION],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert render_conversation(CONVERSATION, family, tokenizer, add_generation_prompt=True).ids == list(
        theirs
    )


def test_family_templates_equal_the_layouts_with_metadata(real):
    family, tokenizer, _ = real
    # ChatGLM2: no system prompt here, see the template's note on the whole-word `sop`.
    conversation = CONVERSATION[1:] if family is CHATGLM2 else [*CONVERSATION[:2], *TOOL[1:3]]
    theirs = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content, "metadata": m.metadata} for m in conversation],
        chat_template=family.chat_template,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert render_conversation(conversation, family, tokenizer, add_generation_prompt=True).ids == list(
        theirs
    )


def test_chatglm3_mask_equals_finetune_hf(chatglm3_tokenizer):
    folder, tokenizer = asset("chatglm3-6b"), chatglm3_tokenizer
    messages = [*CONVERSATION[:3], Message("user", "再见"), Message("assistant", "再见！")]
    input_ids, masks = tokenizer.convert_tokens_to_ids(["[gMASK]", "sop"]), [False, False]
    for message in messages:
        ids = single_message(folder, "chatglm3", tokenizer, message)
        input_ids += ids
        masks += [message.role not in ("system", "user")] * len(ids)
    input_ids.append(tokenizer.eos_token_id)
    masks = [False, *masks]
    rendered = render_conversation(messages, CHATGLM3, tokenizer)
    assert (rendered.ids, rendered.mask) == (input_ids, masks)


def test_chatglm2_ids_equal_build_prompt_and_ptuning(chatglm2_tokenizer):
    folder, tokenizer = asset("chatglm2-6b"), chatglm2_tokenizer
    history = [("你好，你是谁？", "我是 ChatGLM2。\n  Nice to meet you!")]
    query, answer = "写一行 Python: print(1)", "print(1)"
    prompt = "".join(f"[Round {i}]\n\n问：{q}\n\n答：{a}\n\n" for i, (q, a) in enumerate(history, 1))
    prompt += f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："
    a_ids = tokenizer.convert_tokens_to_ids(["[gMASK]", "sop"]) + reference_encode(folder, "chatglm2", prompt)
    b_ids = reference_encode(folder, "chatglm2", answer) + [tokenizer.eos_token_id]
    messages = [Message("user", history[0][0]), Message("assistant", history[0][1]), Message("user", query)]
    assert render_conversation(messages, CHATGLM2, tokenizer, add_generation_prompt=True).ids == a_ids
    rendered = render_conversation([*messages, Message("assistant", answer)], CHATGLM2, tokenizer)
    assert (rendered.ids, rendered.mask) == (a_ids + b_ids, [False] * len(a_ids) + [True] * len(b_ids))


def test_special_tokens_and_stop_tokens_resolve_by_name(real):
    family, tokenizer, _ = real
    for name in (*family.special_tokens, *family.stop_tokens):
        token_id = tokenizer.convert_tokens_to_ids(name)
        assert token_id is not None and token_id != tokenizer.unk_token_id, name


# ------------------------------------------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    ("folder", "family"),
    [
        ("chatglm3-6b", "chatglm3"),
        ("chatglm2-6b", "chatglm2"),
        ("glm-4-9b-chat", "glm4"),
        ("glm-4.5", "glm4_5"),  # issue 8: GLM-4.5's XML template is its own family
        ("chatglm-6b", "chatglm"),  # the v1 family's own tests: test_chatglm6b_family.py
    ],
)
def test_detects_each_official_folder(folder, family):
    assert detect_family(asset(folder)).name == family


def copy_configs(source: Path, target: Path, **changes) -> Path:
    target.mkdir()
    config = json.loads((source / "config.json").read_text()) | changes
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_detection_reads_files_and_template_never_the_name(tmp_path):
    """ChatGLM2 vs 3: the shipped template with ChatGLM3's role tokens, not the checkpoint's name."""
    chatglm3 = asset("chatglm3-6b")
    renamed = copy_configs(chatglm3, tmp_path / "renamed", _name_or_path="THUDM/chatglm2-6b")
    shutil.copy(chatglm3 / "tokenizer_config.json", renamed / "tokenizer_config.json")
    (renamed / "tokenizer.model").write_bytes(b"")
    assert detect_family(renamed) is CHATGLM3
    # a folder with ChatGLM2-6B's files only (no template, no role tokens declared) reads as ChatGLM2, whatever
    # its name says; for a ChatGLM3 checkpoint stripped that far, model.family says "chatglm3"
    bare = copy_configs(chatglm3, tmp_path / "bare", _name_or_path="THUDM/chatglm3-6b-base")
    (bare / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ChatGLMTokenizer"}))
    (bare / "tokenizer.model").write_bytes(b"")
    assert detect_family(bare) is CHATGLM2
    no_tokenizer = copy_configs(chatglm3, tmp_path / "no-tokenizer", _name_or_path="THUDM/chatglm3-6b")
    with pytest.raises(UsageError, match="set model.family .*one of .*chatglm2"):
        detect_family(no_tokenizer)
    stamped = copy_configs(
        chatglm3, tmp_path / "stamped", _name_or_path="my-model", glmtune_family="chatglm2"
    )
    assert detect_family(stamped) is CHATGLM2


def chatglm3_base(target: Path, tokenizer_config: dict | None = None) -> Path:
    """ChatGLM3-6B-Base's shape, which the shared assets do not hold: ChatGLM3-6B's files without the chat
    template (the base model has none), under the base model's name."""
    chatglm3 = asset("chatglm3-6b")
    folder = copy_configs(chatglm3, target, _name_or_path="THUDM/chatglm3-6b-base")
    shutil.copy(chatglm3 / "tokenizer.model", folder / "tokenizer.model")
    shutil.copy(chatglm3 / "special_tokens_map.json", folder / "special_tokens_map.json")
    if tokenizer_config is None:
        tokenizer_config = json.loads((chatglm3 / "tokenizer_config.json").read_text())
        del tokenizer_config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def test_chatglm3_base_detects_by_the_role_tokens_of_its_tokenizer(tmp_path):
    """No template, ChatGLM2's tokenizer.model and config fields: what tells ChatGLM3-6B-Base from ChatGLM2-6B is
    that its tokenizer declares the role tokens, in tokenizer_config.json's added_tokens_decoder..."""
    base = chatglm3_base(tmp_path / "base")
    facts = FolderFacts.read(base)
    assert not facts.chat_template and facts.declares("<|user|>") and facts.declares("<|assistant|>")
    assert candidates(base) == [CHATGLM3]
    assert detect_family(base) is CHATGLM3
    assert [
        t for t in ("<|user|>", "<|assistant|>") if FolderFacts.read(asset("chatglm2-6b")).declares(t)
    ] == []
    # ... or, with a tokenizer_config.json as old as ChatGLM2-6B's, in the tokenization_chatglm.py it ships, whose
    # SPTokenizer appends them after the control tokens (the line below is that file's; the assets hold no code)
    old_style = json.loads((asset("chatglm2-6b") / "tokenizer_config.json").read_text())
    coded = chatglm3_base(tmp_path / "coded", old_style)
    assert detect_family(coded) is CHATGLM2  # without the code, nothing tells them apart
    (coded / "tokenization_chatglm.py").write_text(
        'role_special_tokens = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]\n'
    )
    assert detect_family(coded) is CHATGLM3
    without_roles = chatglm3_base(tmp_path / "without-roles", old_style)
    (without_roles / "tokenization_chatglm.py").write_text(
        'special_tokens = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]\n'
    )
    assert detect_family(without_roles) is CHATGLM2


def test_a_base_folder_two_records_claim_is_still_refused_naming_both(tmp_path):
    base = chatglm3_base(tmp_path / "both")
    (base / "ice_text.model").write_bytes(b"")  # ChatGLM-6B v1's tokenizer file as well
    with pytest.raises(UsageError, match=r"several GLM families \(chatglm3, chatglm\).*set model\.family"):
        detect_family(base)


def test_no_family_checks_outside_the_registry():
    pattern = re.compile(r"family\.name\s*[!=]=|\bis (not )?(GLM4|CHATGLM|CHATGLM2|CHATGLM3)\b|\.name in \(")
    offenders = [
        f"{path.name}:{number}"
        for path in sorted((ROOT / "glmtune").glob("*.py"))
        if path.name != "families.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders
