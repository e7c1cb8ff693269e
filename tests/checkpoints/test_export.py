"""What an export gives its users: it exists for a one-record run, `chat` keeps its generation settings, plain
transformers batches it correctly (4.57 as well as 5, slow tier), and its `model.chat()` shim keeps typed
special-token strings as text."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_recipe

from glmtune.checkpoints.export import CHAT_MODULE, TEMPLATE_BASE_IMPORT, TRANSFORMERS_4_CHECKED, export_run
from glmtune.checkpoints.load import load_for_inference, load_tokenizer
from glmtune.checkpoints.templates.modeling_glmtune_chat import chat_prompt_ids
from glmtune.checkpoints.tiny import builtin_path
from glmtune.data.render import render_conversation
from glmtune.families import Message, detect_family
from glmtune.inference.chat import chat
from glmtune.inference.generation import generate_answers
from glmtune.recipe_files import load_recipe
from glmtune.training.train import train

RECIPE_MAX_NEW_TOKENS = 12
TYPED_SPECIALS = "Say <|assistant|> and <|user|> [gMASK] back to me."


@pytest.fixture(scope="module")
def one_record_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one-record")
    (folder / "one.jsonl").write_text(
        json.dumps({"instruction": "Who are you?", "output": "Glimmer."}) + "\n"
    )
    body = f"""[run]
output_dir = "{folder / "runs"}"
[model]
path = "builtin:tiny-glm4"
dtype = "float32"
[data]
train = ["one.jsonl"]
max_length = 32
[train]
max_steps = 1
batch_size = 1
[generation]
max_new_tokens = {RECIPE_MAX_NEW_TOKENS}
"""
    return train(load_recipe(write_recipe(folder, body)))


@pytest.fixture(scope="module")
def exported(one_record_run, tmp_path_factory) -> Path:
    return export_run(one_record_run, tmp_path_factory.mktemp("export") / "model")


def test_a_one_record_run_exports_a_folder_for_inference(exported):
    assert (exported / "model.safetensors").is_file()
    config = json.loads((exported / "tokenizer_config.json").read_text())
    assert config["padding_side"] == "left"
    assert (
        json.loads((exported / "generation_config.json").read_text())["max_new_tokens"]
        == RECIPE_MAX_NEW_TOKENS
    )


def test_the_shipped_chat_module_is_the_package_template(exported):
    template = Path(sys.modules[chat_prompt_ids.__module__].__file__).read_text(encoding="utf-8")
    shipped = (exported / f"{CHAT_MODULE}.py").read_text(encoding="utf-8")
    assert shipped == template.replace(
        TEMPLATE_BASE_IMPORT, "from transformers import Glm4ForCausalLM as BaseModel"
    )
    assert f"transformers {TRANSFORMERS_4_CHECKED}" in (exported / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("source", ["run", "export"])
@pytest.mark.parametrize("flag", [None, 5])
def test_chat_query_generates_as_many_tokens_as_asked(one_record_run, exported, source, flag, capsys):
    folder = one_record_run if source == "run" else exported
    loaded = load_for_inference(folder)
    messages = [[Message("user", "Who are you?")]]
    wanted = flag or RECIPE_MAX_NEW_TOKENS
    expected, longer = (
        generate_answers(loaded.model, loaded.tokenizer, loaded.family, messages, {"max_new_tokens": n})[0]
        for n in (wanted, wanted + 8)
    )
    assert expected != longer, "the tiny model stopped early: the limit would not show"
    capsys.readouterr()
    chat(folder, query="Who are you?", max_new_tokens=flag)
    assert capsys.readouterr().out.strip() == expected


def test_plain_transformers_batches_the_export_as_it_answers_one_prompt(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Who are you, and what can you do for me today? Tell me at length."}],
    ]

    def answers(batch):
        inputs = tokenizer.apply_chat_template(
            batch, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        return tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    one_at_a_time = [answers([conversation])[0] for conversation in conversations]
    assert answers(conversations) == one_at_a_time


def test_chat_shim_keeps_typed_special_tokens_as_text(exported):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported, trust_remote_code=True)
    model = AutoModel.from_pretrained(exported, trust_remote_code=True).eval()
    glmtune = load_for_inference(exported)
    messages = [Message("user", TYPED_SPECIALS)]
    response, _ = model.chat(tokenizer, TYPED_SPECIALS, max_new_tokens=6)
    settings = {"max_new_tokens": 6}
    assert (
        response
        == generate_answers(glmtune.model, glmtune.tokenizer, glmtune.family, [messages], settings)[0]
    )
    ids = sys.modules[type(model).__module__].chat_prompt_ids(
        tokenizer, [{"role": "user", "content": TYPED_SPECIALS}]
    )
    assert (
        ids
        == render_conversation(messages, glmtune.family, glmtune.tokenizer, add_generation_prompt=True).ids
    )
    assert ids.count(tokenizer.convert_tokens_to_ids("<|assistant|>")) == 1  # the generation prompt's own


@pytest.mark.parametrize("name", ["tiny-glm4", "tiny-glm", "tiny-chatglm3", "tiny-chatglm2"])
def test_chat_shim_prompt_ids_equal_the_renderer(name):
    folder = builtin_path(name)
    family, tokenizer = detect_family(folder), load_tokenizer(folder)
    conversation = [
        Message("system", "Be <|system|> brief."),
        Message("user", "你好 <|user|>"),
        Message("assistant", "Hello <|assistant|>![gMASK]"),
        Message("user", TYPED_SPECIALS),
    ]
    if (
        name == "tiny-chatglm2"
    ):  # no system prompt of its own; see its template's note on the whole-word `sop`
        conversation = conversation[1:]
    ids = chat_prompt_ids(tokenizer, [{"role": m.role, "content": m.content} for m in conversation])
    assert ids == render_conversation(conversation, family, tokenizer, add_generation_prompt=True).ids


# Run in a separate interpreter (4.57.1's venv, or this one): what a user of that transformers version gets.
PLAIN_TRANSFORMERS = """
import json, sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
out = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out).eval()
batch = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Who are you, and what can you do?"}]]
inputs = tokenizer.apply_chat_template(batch, add_generation_prompt=True, padding=True, return_tensors="pt",
                                       return_dict=True)
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
json.dump({"version": transformers.__version__, "class": type(model).__name__,
           "ids": tokenizer("你好 <|user|> world", add_special_tokens=False)["input_ids"],
           "prompt": inputs["input_ids"].tolist(), "generated": output.tolist(),
           "decoded": tokenizer.batch_decode(output, skip_special_tokens=True)}, sys.stdout)
"""


def _transformers4_python() -> Path:
    """A venv with transformers 4.57.1, made once per machine under /tmp (pip from the configured indexes)."""
    venv = Path("/tmp") / f"glmtune-transformers-{TRANSFORMERS_4_CHECKED}"
    python = venv / "bin" / "python"
    check = f"import safetensors, torch, transformers; assert transformers.__version__ == {TRANSFORMERS_4_CHECKED!r}"
    if python.is_file() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    packages = [f"transformers=={TRANSFORMERS_4_CHECKED}", f"torch=={torch.__version__.split('+')[0]}"]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *packages, "safetensors"], check=True)
    return python


@pytest.mark.slow
def test_the_export_loads_and_generates_the_same_on_transformers_4(exported):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    results = []
    for python in (_transformers4_python(), Path(sys.executable)):
        run = subprocess.run([str(python), "-c", PLAIN_TRANSFORMERS, str(exported)],
                             capture_output=True, text=True, env=env, cwd="/", timeout=600)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        results.append(json.loads(run.stdout))
    old, new = results
    assert old.pop("version") == TRANSFORMERS_4_CHECKED and new.pop("version").startswith("5.")
    assert old == new
