"""Original remote-code ChatGLM checkpoints end to end without remote code: load on the fly, `glmtune convert`,
train (LoRA and full), export in both layouts, reload, chat; and the refusals.

Uses glmtune's builtin tiny original-layout models (`builtin:tiny-chatglm3`, `builtin:tiny-chatglm2`: the official
config fields and parameter names, an in-process SentencePiece model at the original special-token ids), so it runs
without the shared assets; the GLM-4-9B-chat test needs the official tokenizer file and skips without it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED_ASSETS, tiny_recipe
from original_fixtures import tiny_original_checkpoint
from safetensors.torch import load_file
from test_cli import assert_usage_error, glmtune
from transformers import AutoModelForCausalLM, AutoTokenizer

from glmtune.checkpoints.convert import load_original_state
from glmtune.checkpoints.export import export_run
from glmtune.checkpoints.load import load_model, load_tokenizer
from glmtune.checkpoints.original import is_original_folder, save_original_layout
from glmtune.checkpoints.tiny import builtin_path
from glmtune.data.render import render_conversation, stop_token_ids
from glmtune.errors import UsageError
from glmtune.families import CHATGLM3, GLM4, Message, detect_family, get_family
from glmtune.inference.chat import chat
from glmtune.inference.generation import generate_answers
from glmtune.training.train import train

PROBE = [
    Message("system", "Be brief."),
    Message("user", "你好，你是谁？ Who are you?"),
    Message("assistant", "我是 Glimmer。"),
]


def logits(model, ids: list[int]):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def chatglm3_dir() -> Path:
    return builtin_path("tiny-chatglm3")


def test_builtin_folders_are_original_layout(chatglm3_dir):
    config = json.loads((chatglm3_dir / "config.json").read_text())
    assert is_original_folder(chatglm3_dir) and config["model_type"] == "chatglm"
    assert any(
        name.startswith("transformer.encoder.layers.")
        for name in load_file(chatglm3_dir / "model.safetensors")
    )
    tokenizer = load_tokenizer(chatglm3_dir)
    assert tokenizer.convert_tokens_to_ids(["[gMASK]", "sop", "<|user|>", "<|observation|>"]) == [
        64790, 64792, 64795, 64797,
    ]  # fmt: skip
    assert detect_family(builtin_path("tiny-chatglm2")).name == "chatglm2"


def test_convert_then_load_natively_equals_loading_on_the_fly(chatglm3_dir, tmp_path):
    out = tmp_path / "native"
    result = glmtune("convert", chatglm3_dir, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not is_original_folder(out) and detect_family(out) is CHATGLM3
    original_tokenizer = load_tokenizer(chatglm3_dir)
    ids = render_conversation(PROBE, CHATGLM3, original_tokenizer).ids
    native = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(native).__name__ == "GlmForCausalLM"
    assert torch.equal(logits(native, ids), logits(load_model(chatglm3_dir, dtype="float32").eval(), ids))
    assert AutoTokenizer.from_pretrained(out).encode(PROBE[1].content) == original_tokenizer.encode(
        PROBE[1].content
    )
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == stop_token_ids(CHATGLM3, original_tokenizer)


def test_convert_refuses_a_folder_that_is_not_original_layout(tiny_dir, tmp_path):
    assert_usage_error(glmtune("convert", tiny_dir, "--out", tmp_path / "x"), "not an original-layout")
    assert not (tmp_path / "x").exists()


def test_original_to_native_to_original_is_bit_identical(chatglm3_dir, tmp_path):
    model = load_model(chatglm3_dir, dtype="float32")
    save_original_layout(
        model.state_dict(), chatglm3_dir, CHATGLM3, tmp_path, dtype="float32", max_shard_size="2MB"
    )
    assert (tmp_path / "model.safetensors.index.json").is_file()  # sharded, as the official checkpoints are
    before, after = load_original_state(chatglm3_dir), load_original_state(tmp_path)
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[name], after[name]) for name in before)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == json.loads((chatglm3_dir / "config.json").read_text()) | {"glmtune_family": "chatglm3"}
    assert (tmp_path / "tokenizer.model").read_bytes() == (chatglm3_dir / "tokenizer.model").read_bytes()


@pytest.mark.parametrize("model", ["tiny-chatglm3", "tiny-chatglm2"])
def test_lora_train_export_both_layouts_reload_and_chat(tmp_path, capsys, model):
    run_dir = train(tiny_recipe(tmp_path, f"builtin:{model}"))
    run = json.loads((run_dir / "run.json").read_text())
    family = get_family(run["family"])
    assert family.name == model.removeprefix("tiny-") and run["status"] == "complete"
    assert run["base_model"]["path"] == str(builtin_path(model).resolve())
    assert run["summary"]["last_loss"] < run["summary"]["first_loss"]
    assert all(".layers." in name for name in load_file(run_dir / "adapter" / "adapter_model.safetensors"))

    native = export_run(run_dir, tmp_path / "native")
    original = export_run(run_dir, tmp_path / "original", layout="original")
    assert detect_family(native) is family and detect_family(original) is family
    assert not is_original_folder(native) and (native / "tokenizer.json").is_file()
    assert is_original_folder(original) and (original / "tokenizer.model").is_file()
    assert all(name.startswith("transformer.") for name in load_original_state(original))
    capsys.readouterr()
    for source in (run_dir, native, original):
        chat(source, query="你是谁？", max_new_tokens=6)
        answer = capsys.readouterr().out
        assert answer.count("\n") == 1, (source, answer)


def test_full_fine_tuning_exports_changed_original_weights(tmp_path):
    run_dir = train(tiny_recipe(tmp_path, "builtin:tiny-chatglm3", "method.kind='full'", "train.max_steps=2"))
    assert json.loads((run_dir / "run.json").read_text())["weights"] == "model"
    original = export_run(run_dir, tmp_path / "original", layout="original")
    base, tuned = load_original_state(builtin_path("tiny-chatglm3")), load_original_state(original)
    assert sorted(base) == sorted(tuned)
    assert any(not torch.equal(base[name], tuned[name]) for name in base)


def test_export_original_layout_needs_an_original_base(tmp_path):
    run_dir = train(tiny_recipe(tmp_path, "builtin:tiny-glm4", "train.max_steps=1"))
    with pytest.raises(UsageError, match="not in an original remote-code layout"):
        export_run(run_dir, tmp_path / "out", layout="original")
    assert not (tmp_path / "out").exists()


def small_original_folder(folder: Path, **changes) -> Path:
    """Weights and config.json only: no tokenizer files, so nothing tells the family but the caller."""
    source = json.loads((builtin_path("tiny-chatglm3") / "config.json").read_text()) | changes
    config, state = tiny_original_checkpoint(source, vocab=512)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_need_allow_pickle(tmp_path):
    folder = small_original_folder(tmp_path / "bin")
    with pytest.raises(UsageError, match="allow_pickle"):
        load_model(folder, dtype="float32", family=CHATGLM3)
    loaded = load_model(folder, dtype="float32", allow_pickle=True, family=CHATGLM3)
    assert type(loaded).__name__ == "GlmForCausalLM"


def test_chatglm_v1_checkpoints_the_port_does_not_implement_are_refused(tmp_path):
    # ChatGLM-6B v1 itself loads (tests/families/test_chatglm6b_family.py); its int4/int8 and P-tuning variants do not
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "ice_text.model").write_bytes(b"")
    for extra, message in (
        ({"quantization_bit": 4}, "quantization_bit=4"),
        ({"pre_seq_len": 128}, "pre_seq_len"),
    ):
        (folder / "config.json").write_text(
            json.dumps({"model_type": "chatglm", "position_encoding_2d": True, **extra})
        )
        assert detect_family(folder).name == "chatglm"
        with pytest.raises(UsageError, match=message):
            load_model(folder, dtype="float32")


def test_glm4_9b_chat_original_layout_loads_and_answers(tmp_path):
    official = SHARED_ASSETS / "glm-4-9b-chat"
    if not (official / "tokenizer.model").is_file():
        pytest.skip(
            f"official GLM-4-9B-chat tokenizer not found at {official} (or set GLMTUNE_SHARED_ASSETS)"
        )
    config, state = tiny_original_checkpoint(
        json.loads((official / "config.json").read_text()), hidden=32, vocab=151552
    )
    folder = tmp_path / "glm-4-9b-chat-tiny"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(official / name, folder / name)
    assert detect_family(folder) is GLM4
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, dtype="float32", allow_pickle=True).eval()
    answer = generate_answers(model, tokenizer, GLM4, [[Message("user", "你好")]], {"max_new_tokens": 4})
    assert isinstance(answer[0], str)
    prompt = render_conversation([Message("user", "你好")], GLM4, tokenizer, add_generation_prompt=True).ids
    assert prompt[:3] == [151331, 151333, 151336]  # [gMASK] <sop> <|user|>, the ids in tokenizer_config.json


def test_convert_and_export_layout_are_on_the_command_line():
    convert_help, export_help = glmtune("convert", "--help"), glmtune("export", "--help")
    assert convert_help.returncode == 0 and "Example: glmtune convert" in convert_help.stdout
    assert (
        export_help.returncode == 0 and "--layout" in export_help.stdout and "original" in export_help.stdout
    )
