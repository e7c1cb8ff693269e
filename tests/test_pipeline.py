"""The main job end to end through the CLI: train the demo, eval against the base, export, reload, chat."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from test_cli import glmtune

QUESTIONS = ["你是谁？", "Who are you?"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = glmtune("train", ROOT / "recipes" / "demo.toml", "--set", f"run.output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "demo"


@pytest.fixture(scope="module")
def exported(demo_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    result = glmtune("export", demo_run, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reloaded logits match base + adapter" in " ".join(result.stderr.split())
    return out


def test_run_directory_describes_itself(demo_run):
    run = json.loads((demo_run / "run.json").read_text())
    assert run["family"] == "glm4" and run["method"] == "lora" and run["status"] == "complete"
    assert run["base_model"]["fingerprint"] and run["versions"]["transformers"]
    for name in (
        "recipe.toml",
        "metrics.jsonl",
        "adapter/adapter_model.safetensors",
        "tokenizer/tokenizer.json",
        "data/stats.json",
    ):
        assert (demo_run / name).is_file(), name
    assert run["summary"]["last_loss"] < run["summary"]["first_loss"] / 10


def test_tuned_model_knows_its_new_identity_and_the_base_does_not(demo_run):
    result = glmtune("eval", demo_run)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((demo_run / "eval.json").read_text())["results"]
    assert scores["tuned"]["exact_match"] >= 90.0
    assert scores["base"]["exact_match"] < 10.0
    assert scores["tuned"]["rouge-l"] > scores["base"]["rouge-l"]
    retention = json.loads((demo_run / "eval.json").read_text())[
        "retention"
    ]  # the demo asks general questions too
    assert retention["tuned vs base"]["questions"] == 40 and "knowledge retention" in result.stderr


def test_export_reloads_in_a_fresh_process_both_ways(demo_run, exported):
    from glmtune.checkpoints.load import load_for_inference

    script = f"""
import json, sys, torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
out = {str(exported)!r}
tokenizer = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out)
inputs = tokenizer.apply_chat_template([{{"role": "user", "content": "你是谁？"}}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
generated = model.generate(**inputs, max_new_tokens=40, do_sample=False)
answer = tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
logits = model(input_ids=inputs["input_ids"]).logits[0].tolist()
tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
chat_model = AutoModel.from_pretrained(out, trust_remote_code=True)
response, history = chat_model.chat(tokenizer, "你是谁？", history=[])
json.dump({{"answer": answer, "chat": response, "history": history, "ids": inputs["input_ids"][0].tolist(),
           "logits": logits, "glmtune": "glmtune" in sys.modules}}, sys.stdout)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout)
    assert not fresh["glmtune"]
    assert "Glimmer" in fresh["answer"] and fresh["chat"] == fresh["answer"]
    assert fresh["history"][-1] == {"role": "assistant", "content": fresh["answer"]}
    adapter = load_for_inference(demo_run)
    with torch.no_grad():
        expected = adapter.model(input_ids=torch.tensor([fresh["ids"]])).logits[0]
    assert torch.allclose(torch.tensor(fresh["logits"]), expected, atol=1e-4)
    generation = json.loads((exported / "generation_config.json").read_text())
    assert sorted(generation["eos_token_id"]) == sorted(
        adapter.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])
    )


@pytest.mark.parametrize("source", ["run", "export"])
def test_chat_query_prints_only_the_answer(demo_run, exported, source):
    result = glmtune("chat", demo_run if source == "run" else exported, "--query", "Who are you?")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith("I am Glimmer") and result.stdout.count("\n") == 1


def test_chat_repl_with_scripted_stdin(exported):
    script = "你是谁？\n/system Answer briefly.\n/clear\nWho are you?\n/exit\nnever read\n"
    result = glmtune("chat", exported, stdin=script)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = [line for line in result.stdout.splitlines() if line.startswith("assistant>")]
    assert len(answers) == 2 and "Glimmer" in answers[0]
    assert "system prompt set" in result.stderr and "history cleared" in result.stderr
