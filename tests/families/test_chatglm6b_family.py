"""ChatGLM-6B (v1) as a glmtune family: golden masks written by hand, ids and labels equal to the original prompt
builder and ptuning/main.py, detection, and a tiny original-layout checkpoint trained (LoRA and full), exported in both
layouts, reloaded in a fresh process with its remote code, and chatted with.

Uses the official ice_text.model and tokenizer_config.json in the shared assets (../shared/assets/glm-models, or
GLMTUNE_SHARED_ASSETS) and skips without them; nothing is copied into the repository. The original ids are computed
the way the original code does, with sentencepiece directly (`original_tokenizer.reference_encode` = `SPTokenizer.encode`,
i.e. `tokenizer.encode(text, add_special_tokens=False)`), from THUDM/chatglm-6b and THUDM/ChatGLM-6B:
- modeling_chatglm.py `chat` / `stream_chat`: the prompt is the query alone without history, else
  "[Round {i}]\\n问：{q}\\n答：{r}\\n" per past round (i from 0) then "[Round {n}]\\n问：{query}\\n答：";
- tokenization_chatglm.py `build_inputs_with_special_tokens`: a_ids + [gMASK, <sop>] (+ b_ids + [<eop>]);
- ptuning/main.py `preprocess_function_train`: labels = [-100] * context_length + input_ids[context_length:] with
  context_length = input_ids.index(<sop>), so <sop> is a target.
Decoded text shows "问:" where the prompt says "问：": ice_text.model normalises with NFKC, as the original does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_ASSETS, runs, tiny_recipe
from original_fixtures import tiny_chatglm6b_checkpoint
from safetensors.torch import load_file, save_file
from test_cli import glmtune
from test_families import MULTI, SINGLE

from glmtune.checkpoints.convert import load_original_state
from glmtune.checkpoints.export import export_run
from glmtune.checkpoints.load import load_config, load_for_inference, load_model
from glmtune.checkpoints.original import is_original_folder, load_original_tokenizer
from glmtune.data.render import render_conversation, render_sample
from glmtune.errors import UsageError
from glmtune.families import CHATGLM, Message, detect_family, get_family
from glmtune.families import modeling_chatglm6b as chatglm6b
from glmtune.families import tokenization_sentencepiece_unigram as unigram_tokenizer
from glmtune.families.original_tokenizer import reference_encode as encode_with_spec
from glmtune.inference.chat import chat
from glmtune.training.train import train

GMASK, SOP, EOP = 130001, 130004, 130005  # the official ids, checked against the tokenizer by name below


def reference_encode(folder: Path, family: str, text: str) -> list[int]:
    """The original tokenizer's ids of `text` (sentencepiece / tiktoken directly)."""
    return encode_with_spec(folder, get_family(family).original.tokenizer, text)


@pytest.fixture(scope="module")
def official() -> Path:
    folder = SHARED_ASSETS / "chatglm-6b"
    if not (folder / "ice_text.model").is_file():
        pytest.skip(
            f"official ChatGLM-6B files not found at {folder} (../shared beside the repo, or GLMTUNE_SHARED_ASSETS)"
        )
    return folder


@pytest.fixture(scope="module")
def tokenizer(official):
    return load_original_tokenizer(official, CHATGLM)


# ---------------------------------------------------------------------------------------------------- golden masks


def test_single_turn_prompt_is_the_query_then_gmask_sop(tokenizer):
    rendered = render_conversation(SINGLE, CHATGLM, tokenizer)
    # the answer is encoded on its own, so it starts with SentencePiece's dummy prefix (decoded as a space)
    assert runs(rendered, tokenizer) == [("你好[gMASK]", False), ("<sop> 我是Glimmer。<eop>", True)]
    assert tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>", "<eop>"]) == [GMASK, SOP, EOP]
    assert rendered.ids[-1] == tokenizer.eos_token_id == EOP
    assert rendered.ids.index(GMASK) + 1 == rendered.ids.index(SOP)


def test_multi_turn_trains_only_the_last_answer_with_system_in_front(tokenizer):
    expected = [
        ("Be brief.\n[Round 0]\n问:Q1\n答:A1\n[Round 1]\n问:Q2\n答:[gMASK]", False),
        ("<sop> A2<eop>", True),
    ]
    assert runs(render_conversation(MULTI, CHATGLM, tokenizer), tokenizer) == expected
    assert runs(render_conversation(MULTI, CHATGLM, tokenizer, mask_history=True), tokenizer) == expected


def test_system_prompt_without_history_precedes_the_bare_query(tokenizer):
    messages = [Message("system", "Be brief."), *SINGLE]
    assert runs(render_conversation(messages, CHATGLM, tokenizer), tokenizer) == [
        ("Be brief.\n你好[gMASK]", False),
        ("<sop> 我是Glimmer。<eop>", True),
    ]
    prompt = render_conversation(messages[:2], CHATGLM, tokenizer, add_generation_prompt=True)
    assert runs(prompt, tokenizer) == [("Be brief.\n你好[gMASK]<sop>", False)]


def test_tool_calls_and_observations_are_refused(tokenizer):
    tool = [Message("user", "Weather?"), Message("assistant", '{"city": "Paris"}', metadata="get_weather")]
    for messages in (tool, [*SINGLE, Message("observation", "{}")]):
        with pytest.raises(UsageError, match="ChatGLM-6B has no tool calls"):
            render_conversation(messages, CHATGLM, tokenizer)


# ------------------------------------------------------------------------------- equal to the original builders

HISTORY = [("你好，你是谁？", "我是 ChatGLM-6B。\n  Nice to meet you!"), ("Tab\there", "ok")]
QUERY, ANSWER = "写一行 Python: print(1)", "print(1)\n"


def conversation(history, query, answer=None) -> list[Message]:
    messages = [Message(role, text) for q, a in history for role, text in (("user", q), ("assistant", a))]
    messages.append(Message("user", query))
    return messages if answer is None else [*messages, Message("assistant", answer)]


def original_prompt(history, query) -> str:
    """modeling_chatglm.py `chat`."""
    if not history:
        return query
    prompt = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(history))
    return prompt + f"[Round {len(history)}]\n问：{query}\n答："


@pytest.mark.parametrize("history", [HISTORY, []], ids=["history", "no-history"])
def test_ids_and_labels_equal_chat_and_ptuning(official, tokenizer, history):
    a_ids = reference_encode(official, "chatglm", original_prompt(history, QUERY))
    b_ids = reference_encode(official, "chatglm", ANSWER)
    prompt = render_conversation(conversation(history, QUERY), CHATGLM, tokenizer, add_generation_prompt=True)
    assert prompt.ids == a_ids + [GMASK, SOP]  # what chat() feeds generate()
    input_ids = a_ids + [GMASK, SOP] + b_ids + [EOP]
    context_length = input_ids.index(SOP)
    labels = [-100] * context_length + input_ids[context_length:]
    rendered = render_conversation(conversation(history, QUERY, ANSWER), CHATGLM, tokenizer)
    assert rendered.ids == input_ids
    assert [
        token if trained else -100 for token, trained in zip(rendered.ids, rendered.mask, strict=True)
    ] == labels


def test_truncation_drops_history_first_and_keeps_sop_and_eop(tokenizer):
    messages = conversation(HISTORY, QUERY, ANSWER)
    full = render_conversation(messages, CHATGLM, tokenizer)
    cut = render_sample(messages, CHATGLM, tokenizer, max_length=len(full.ids) - 5, overlong="truncate")
    assert cut.status == "truncated" and len(cut.ids) <= len(full.ids) - 5
    assert runs(cut, tokenizer)[-1] == ("<sop> print(1)\n<eop>", True)
    # the oldest round went first; the rest are numbered from 0 again, as chat() numbers a shorter history
    assert tokenizer.decode(cut.ids).startswith("[Round 0]\n问:Tab\there\n答:ok\n[Round 1]")


def test_chat_template_equals_the_layout(tokenizer):
    conversations = [SINGLE, MULTI, MULTI[:4], [Message("system", "Be brief."), *SINGLE], SINGLE[:1]]
    for messages in (*conversations, conversation(HISTORY, QUERY, ANSWER)):
        theirs = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            chat_template=CHATGLM.chat_template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        ours = render_conversation(messages, CHATGLM, tokenizer, add_generation_prompt=True).ids
        assert list(theirs) == ours, messages


def test_special_and_stop_tokens_resolve_by_name(tokenizer):
    for name in (*CHATGLM.special_tokens, *CHATGLM.stop_tokens, CHATGLM.pad_token, CHATGLM.eos_token):
        token_id = tokenizer.convert_tokens_to_ids(name)
        assert token_id is not None and token_id != tokenizer.unk_token_id, name
    assert tokenizer.convert_tokens_to_ids(CHATGLM.pad_token) == 3  # config.json pad_token_id


# ------------------------------------------------------------------------------------------------------ detection


def test_detects_the_official_folder_and_the_port_config(official):
    assert detect_family(official) is CHATGLM
    config = load_config(official)  # what `train --dry-run` and the memory estimate build on the meta device
    assert isinstance(config, chatglm6b.ChatGLM6BConfig) and config.num_layers == 28
    with torch.device("meta"):
        model = chatglm6b.ChatGLM6BForCausalLM(config)
    assert 6.1e9 < sum(p.numel() for p in model.parameters()) < 6.3e9


@pytest.mark.parametrize(
    ("config", "files"),
    [
        ({"model_type": "chatglm"}, ["ice_text.model"]),
        ({"model_type": "chatglm", "position_encoding_2d": True}, []),
        ({"model_type": "chatglm", "inner_hidden_size": 16384}, []),
        ({"model_type": "chatglm6b"}, []),  # a full fine-tuning run's model/ folder
    ],
)
def test_detects_v1_folders(tmp_path, config, files):
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name in files:
        (tmp_path / name).write_bytes(b"")
    assert detect_family(tmp_path) is CHATGLM


# ------------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_v1(official, tokenizer, tmp_path_factory) -> Path:
    """A 2-layer ChatGLM-6B checkpoint in the original layout (config.json, model.safetensors under the original
    names, lm_head tied) beside the official tokenizer files, in a temporary folder."""
    folder = tmp_path_factory.mktemp("chatglm-6b-tiny")
    config, state = tiny_chatglm6b_checkpoint()
    with torch.no_grad():
        embeddings = state["transformer.word_embeddings.weight"]
        embeddings[len(tokenizer) :] = 0.0  # the padded rows past the 130,344 pieces are never predicted
        # With the scaled residual a random tied head mostly repeats the last token; stronger MLP outputs stand in
        # for pretraining, so generation gives varied text.
        for i in range(config["num_layers"]):
            state[f"transformer.layers.{i}.mlp.dense_4h_to_h.weight"].mul_(30.0)
        state["lm_head.weight"] = embeddings.clone()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("ice_text.model", "tokenizer_config.json"):
        shutil.copy(official / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def lora_run(tiny_v1, tmp_path_factory) -> Path:
    assert is_original_folder(tiny_v1) and detect_family(tiny_v1) is CHATGLM
    return train(tiny_recipe(tmp_path_factory.mktemp("lora"), tiny_v1))


@pytest.fixture(scope="module")
def exports(lora_run, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    return {layout: export_run(lora_run, out / layout, layout=layout) for layout in ("native", "original")}


def test_lora_run_trains_the_port_without_remote_code(lora_run):
    run = json.loads((lora_run / "run.json").read_text())
    assert (
        run["family"] == "chatglm" and run["status"] == "complete" and "trust_remote_code" not in run
    )  # recipe.toml says
    assert run["summary"]["last_loss"] < run["summary"]["first_loss"]
    adapter = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    for target in ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"):
        assert any(f".{target}.lora_A" in name for name in adapter), target


def test_native_export_reloads_in_a_fresh_process_with_its_own_code(lora_run, exports, tokenizer):
    native = exports["native"]
    assert (native / "modeling_chatglm6b.py").read_text() == Path(chatglm6b.__file__).read_text()
    shipped = Path(unigram_tokenizer.__file__).name
    assert (native / shipped).read_text() == Path(unigram_tokenizer.__file__).read_text()
    config = json.loads((native / "config.json").read_text())
    assert config["model_type"] == "chatglm6b" and config["glmtune_family"] == "chatglm"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_chatglm6b.ChatGLM6BForCausalLM"
    assert json.loads((native / "generation_config.json").read_text())["eos_token_id"] == [EOP]
    script = f"""
import json, sys
sys.modules["glmtune"] = None  # the export's code must not need glmtune
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
out = {str(native)!r}
tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
inputs = tokenizer.apply_chat_template([{{"role": "user", "content": "你是谁？"}}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
answer = tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
logits = model(input_ids=inputs["input_ids"]).logits[0].tolist()
response, history = AutoModel.from_pretrained(out, trust_remote_code=True).chat(tokenizer, "你是谁？", history=[], max_new_tokens=6)
json.dump({{"answer": answer, "chat": response, "history": history, "ids": inputs["input_ids"][0].tolist(),
           "logits": logits, "class": type(model).__module__, "tokenizer": type(tokenizer).__module__}}, sys.stdout)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout)
    assert fresh["class"].startswith("transformers_modules.")  # the folder's code, not glmtune's
    assert fresh["tokenizer"].startswith("transformers_modules.")
    prompt = render_conversation(
        [Message("user", "你是谁？")], CHATGLM, tokenizer, add_generation_prompt=True
    )
    assert fresh["ids"] == prompt.ids and fresh["ids"][-2:] == [GMASK, SOP]
    assert fresh["answer"] and fresh["chat"] == fresh["answer"]
    assert fresh["history"][-1] == {"role": "assistant", "content": fresh["answer"]}
    adapter = load_for_inference(lora_run)
    with torch.no_grad():
        expected = adapter.model(input_ids=torch.tensor([fresh["ids"]])).logits[0]
    assert torch.allclose(torch.tensor(fresh["logits"]), expected, atol=1e-4)


def test_original_export_has_the_original_names_config_and_tokenizer_files(tiny_v1, exports):
    original = exports["original"]
    assert is_original_folder(original) and detect_family(original) is CHATGLM
    base, tuned = load_original_state(tiny_v1), load_original_state(original)
    rotary = {f"transformer.layers.{i}.attention.rotary_emb.inv_freq" for i in range(2)}
    assert set(tuned) == set(base) | rotary  # the remote code saves its rotary buffers too
    assert torch.equal(tuned["lm_head.weight"], tuned["transformer.word_embeddings.weight"])
    assert any(not torch.equal(base[name], tuned[name]) for name in base)  # LoRA merged in
    config = json.loads((original / "config.json").read_text())
    assert config == json.loads((tiny_v1 / "config.json").read_text()) | {"glmtune_family": "chatglm"}
    for name in ("ice_text.model", "tokenizer_config.json"):
        assert (original / name).read_bytes() == (tiny_v1 / name).read_bytes()


def test_chat_gives_the_same_answer_from_the_run_and_both_exports(lora_run, exports, capsys):
    result = glmtune("chat", exports["native"], "--query", "你是谁？", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr[-3000:]
    answers = [result.stdout]
    capsys.readouterr()
    for source in (lora_run, exports["original"]):
        chat(source, query="你是谁？", max_new_tokens=6)
        answers.append(capsys.readouterr().out)
    assert answers[0].strip() and answers == [answers[0]] * 3, answers


def test_full_fine_tuning_saves_and_exports_the_port(tiny_v1, tmp_path):
    run_dir = train(tiny_recipe(tmp_path, tiny_v1, "method.kind='full'", "train.max_steps=2"))
    assert json.loads((run_dir / "run.json").read_text())["weights"] == "model"
    assert json.loads((run_dir / "model" / "config.json").read_text())["model_type"] == "chatglm6b"
    assert detect_family(run_dir / "model") is CHATGLM
    original = export_run(run_dir, tmp_path / "original", layout="original")
    base, tuned = load_original_state(tiny_v1), load_original_state(original)
    assert any(not torch.equal(base[name], tuned[name]) for name in base)
    assert torch.equal(tuned["lm_head.weight"], tuned["transformer.word_embeddings.weight"])  # still tied


def test_convert_writes_a_folder_plain_transformers_loads_in_a_fresh_process(tiny_v1, tmp_path):
    out = tmp_path / "converted"
    result = glmtune("convert", tiny_v1, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    said = "".join((result.stderr + result.stdout).split())  # the terminal may wrap the line
    assert "trust_remote_code=True" in said and "noremotecode" not in said
    assert (out / "modeling_chatglm6b.py").read_text() == Path(chatglm6b.__file__).read_text()
    assert (out / Path(unigram_tokenizer.__file__).name).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "chatglm6b" and config["glmtune_family"] == "chatglm"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_chatglm6b.ChatGLM6BForCausalLM"
    script = f"""
import json, sys
sys.modules["glmtune"] = None  # the converted folder must not need glmtune
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {str(out)!r}
tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
ids = tokenizer.apply_chat_template([{{"role": "user", "content": "你好"}}], add_generation_prompt=True,
                                    return_dict=True)["input_ids"]
json.dump({{"ids": list(ids), "logits": model(input_ids=__import__("torch").tensor([ids])).logits[0].tolist(),
           "class": type(model).__module__, "eeeee": tokenizer.encode("eeeee")}}, sys.stdout)
"""
    fresh = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    loaded = json.loads(fresh.stdout)
    assert loaded["class"].startswith("transformers_modules.") and loaded["ids"][-2:] == [GMASK, SOP]
    assert loaded["eeeee"] == reference_encode(tiny_v1, "chatglm", "eeeee")  # SentencePiece's order of pieces
    original = load_model(tiny_v1, dtype="float32").eval()
    with torch.no_grad():
        expected = original(input_ids=torch.tensor([loaded["ids"]])).logits[0]
    assert torch.allclose(torch.tensor(loaded["logits"]), expected, atol=1e-5)
