"""MoE architectures (glm4_moe, glm4_moe_lite, glm_moe_dsa, glm5_next): which weights LoRA adapts (the coverage
table, counted from the model), and LoRA and full fine-tuning that train, export (reloaded logits verified) and
chat."""

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT, tiny_recipe
from safetensors.torch import load_file
from test_cli import glmtune

from glmtune.checkpoints.export import export_run
from glmtune.checkpoints.load import load_model
from glmtune.checkpoints.tiny import builtin_path
from glmtune.families import tiny_specs
from glmtune.inference.chat import chat
from glmtune.recipe_files import load_recipe
from glmtune.training.lora import base_name, coverage_rows, group_of, resolve_targets
from glmtune.training.method import apply_method
from glmtune.training.train import train

MOE_TINY = [
    "tiny-glm4-moe",
    "tiny-glm4.5",
    "tiny-glm4.7-flash",
    "tiny-glm5.1",
    "tiny-glm5.2",
    "tiny-glm5.3-flash",
]


def recipe_for(tmp_path, name, *overrides):
    return load_recipe(ROOT / "recipes" / "demo.toml", [f"run.output_dir={tmp_path}", f"model.path='builtin:{name}'",
                                                         *overrides])  # fmt: skip


def count_from_model(model) -> dict[str, tuple[int, int]]:
    """Per group, independently of the table: adapted weights (one lora_A per adapted weight) and LoRA parameters."""
    adapted, lora = Counter(), Counter()
    for name, parameter in model.named_parameters():
        if "lora_" not in name:
            continue
        group = group_of(base_name(name))
        adapted[group] += "lora_A" in name
        lora[group] += parameter.numel()
    return {group: (adapted[group], lora[group]) for group in set(adapted) | set(lora)}


@pytest.mark.parametrize("name", MOE_TINY)
@pytest.mark.parametrize("experts", [False, True])
def test_coverage_table_equals_a_count_from_the_model(tmp_path, name, experts):
    family, _ = tiny_specs()[name]
    recipe = recipe_for(tmp_path, name, f"lora.experts={str(experts).lower()}")
    base = load_model(builtin_path(name))
    targets = resolve_targets(base, family, "auto", experts)
    attention = attention_linears(base)  # before peft wraps them
    model = apply_method(base, recipe, family, quiet=True)
    rows = {row[0]: (int(row[2]), int(row[4].replace(",", ""))) for row in coverage_rows(model, targets)}
    counted = count_from_model(model)
    assert {g: v for g, v in rows.items() if v != (0, 0)} == counted
    config = model.config.get_text_config()
    dense = dense_layers(config)
    sparse = config.num_hidden_layers - dense
    assert counted["dense MLP"][0] == 3 * dense  # the dense first layers' gate/up/down_proj
    assert counted["shared experts"][0] == 3 * sparse  # the shared experts' gate/up/down_proj
    assert counted.get("routed experts", (0, 0))[0] == (
        2 * sparse if experts else 0
    )  # gate_up_proj, down_proj
    assert "router" not in counted and "other" not in counted and "vision" not in counted
    attention_leaves = set(family.lora_targets[model.config.model_type]) - {
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert counted["attention"][0] == sum(len(attention_leaves & leaves) for leaves in attention)


def dense_layers(config) -> int:
    """How many layers have a dense MLP: the first `first_k_dense_replace`, or as `mlp_layer_types` lists them."""
    types = getattr(config, "mlp_layer_types", None)
    return types.count("dense") if types else config.first_k_dense_replace


def attention_linears(model) -> list[set[str]]:
    """Per decoder layer, the leaf names of its attention's own linear layers (not the DSA indexer's)."""
    layers = model.get_decoder().layers
    return [
        {name for name, module in layer.self_attn.named_children() if isinstance(module, torch.nn.Linear)}
        for layer in layers
    ]


def test_dry_run_prints_the_coverage_table(tmp_path):
    result = glmtune("train", ROOT / "recipes" / "demo.toml", "--dry-run", "--set", "model.path='builtin:tiny-glm4.5'",
                     "--set", "lora.experts=true", "--set", f"run.output_dir={tmp_path}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = result.stderr[result.stderr.index("LoRA coverage") :]
    for group in ("attention", "dense MLP", "shared experts", "routed experts", "router"):
        assert group in table
    assert not (tmp_path / "demo").exists()


def test_experts_opt_in_is_refused_on_a_dense_model(tmp_path):
    from glmtune.errors import UsageError

    recipe = recipe_for(tmp_path, "tiny-glm4", "lora.experts=true")
    family, _ = tiny_specs()["tiny-glm4"]
    with pytest.raises(UsageError, match="lora.experts"):
        apply_method(load_model(builtin_path("tiny-glm4")), recipe, family, quiet=True)


def lora_export_chat(tmp_path, capsys, name, *overrides):
    """LoRA on every group (experts too): loss falls, adapters where the table says, the export reloads with
    verified logits, drops the MTP layer count deliberately (where the base config has one), and chats."""
    run_dir = train(
        tiny_recipe(tmp_path, f"builtin:{name}", "lora.experts=true", "train.max_steps=6", *overrides)
    )
    run = json.loads((run_dir / "run.json").read_text())
    assert run["summary"]["last_loss"] < run["summary"]["first_loss"]
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    for part in ("self_attn", "mlp.experts", "mlp.shared_experts", "layers.0.mlp.gate_proj"):
        assert any(part in key for key in adapter), part
    assert not any("visual" in key for key in adapter)
    out = export_run(run_dir, tmp_path / "export")  # raises unless the reloaded logits match base + adapter
    config = json.loads((out / "config.json").read_text())
    card = (out / "README.md").read_text()
    if "num_nextn_predict_layers" in json.loads((builtin_path(name) / "config.json").read_text()):
        assert config["num_nextn_predict_layers"] == 0 and "num_nextn_predict_layers" in card
    assert "--tool-call-parser" in card and "--reasoning-parser" in card
    generation = json.loads((out / "generation_config.json").read_text())
    assert len(generation["eos_token_id"]) == 3
    capsys.readouterr()
    chat(out, query="Who are you?", max_new_tokens=4)
    assert capsys.readouterr().out.endswith("\n")
    return out


def test_tiny_glm4_7_flash_lora_trains_exports_and_chats(tmp_path, capsys):
    lora_export_chat(tmp_path, capsys, "tiny-glm4.7-flash")


FRESH_GENERATE = """
import json, sys, transformers
out, auto_class, opened = sys.argv[1:]
tokenizer = transformers.AutoTokenizer.from_pretrained(out)
model = getattr(transformers, auto_class).from_pretrained(out)
prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                       tokenize=False) + opened
inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
generated = model.generate(**inputs, max_new_tokens=40, do_sample=False)[0, inputs["input_ids"].shape[1]:]
json.dump({"class": type(model).__name__, "generated": generated.tolist(), "glmtune": "glmtune" in sys.modules,
           "answer": tokenizer.decode(generated, skip_special_tokens=True)}, sys.stdout)
"""


def test_tiny_glm5_3_flash_trains_exports_and_generates_with_plain_transformers(tmp_path, capsys):
    """GLM-5.3-Flash's text model inside transformers' image-text-to-text class: LoRA on text only, exported,
    reloaded by plain transformers in a fresh process; greedy generation gives the trained answer and stops at one
    of the family's stop tokens. The training data has no reasoning: after the generation prompt's `<think>` the
    model has learned to write `</think>` and then the answer."""
    family, _ = tiny_specs()["tiny-glm5.3-flash"]
    out = lora_export_chat(tmp_path, capsys, "tiny-glm5.3-flash", "train.max_steps=12")
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "Glm5NextForConditionalGeneration"
    ]
    assert family.auto_class in (out / "README.md").read_text()
    command = [sys.executable, "-c", FRESH_GENERATE, str(out), family.auto_class, ""]
    result = subprocess.run(command, capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout)
    assert fresh["class"] == "Glm5NextForConditionalGeneration" and not fresh["glmtune"]
    stop_ids = set(json.loads((out / "generation_config.json").read_text())["eos_token_id"])
    assert fresh["generated"][-1] in stop_ids and not stop_ids & set(fresh["generated"][:-1])
    assert fresh["answer"].strip() == "I am Glimmer, made by the glmtune team."


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-glm4.5", "tiny-glm5.1", "tiny-glm5.2"])
def test_release_tiny_lora_trains_exports_and_chats(tmp_path, capsys, name):
    lora_export_chat(tmp_path, capsys, name)


@pytest.mark.parametrize(
    "name", ["tiny-glm4.5", "tiny-glm4.7-flash", "tiny-glm5.1", "tiny-glm5.2", "tiny-glm5.3-flash"]
)
def test_release_tiny_full_fine_tuning_exports(tmp_path, name):
    run_dir = train(tiny_recipe(tmp_path, f"builtin:{name}", "method.kind='full'", "train.max_steps=6"))
    run = json.loads((run_dir / "run.json").read_text())
    assert run["weights"] == "model" and run["summary"]["last_loss"] < run["summary"]["first_loss"]
    out = export_run(run_dir, tmp_path / "export")
    merged = load_file(out / "model.safetensors")
    assert any(".experts." in key for key in merged) and all(torch.isfinite(t).all() for t in merged.values())
    base = load_file(builtin_path(name) / "model.safetensors")
    vision = [key for key in base if ".visual." in key]
    assert all(torch.equal(merged[key], base[key]) for key in vision)  # text-only training: the tower is kept
    embeddings = next(key for key in base if "embed_tokens" in key)
    assert not torch.equal(merged[embeddings], base[embeddings])  # while the text model trained


def test_tiny_glm4_moe_lora_trains_and_exports(tmp_path):
    recipe = recipe_for(
        tmp_path, "tiny-glm4-moe", "train.max_steps=6", "train.logging_steps=1", "lora.experts=true"
    )
    run_dir = train(recipe)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["family"] == "glm4" and run["summary"]["last_loss"] < run["summary"]["first_loss"]
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert any("self_attn" in name for name in adapter) and any("mlp.experts" in name for name in adapter)
    assert any("mlp.shared_experts" in name for name in adapter)
    out = export_run(run_dir, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "glm4_moe"
    merged = load_file(out / "model.safetensors")
    assert any(".experts." in name for name in merged)  # saved in the checkpoint layout transformers writes
    assert all(torch.isfinite(t).all() for t in merged.values())


@pytest.mark.parametrize(
    ("name", "block"), [("tiny-glm5.1", "GlmMoeDsaMoE"), ("tiny-glm5.3-flash", "Glm5NextTextMoE")]
)
def test_zero3_marks_each_moe_block_a_leaf_and_other_stages_nothing(tmp_path, name, block):
    from deepspeed.utils import get_z3_leaf_modules

    from glmtune.training.launch import register_moe_leaves

    model = load_model(builtin_path(name))
    zero3 = recipe_for(tmp_path, name, "launch.strategy='deepspeed'", "launch.zero='zero3'")
    zero2 = recipe_for(tmp_path, name, "launch.strategy='deepspeed'", "launch.zero='zero2'")
    assert register_moe_leaves(model, zero2) == [] and get_z3_leaf_modules(model) == []
    assert register_moe_leaves(model, zero3) == [block]
    config = model.config.get_text_config()
    sparse = config.num_hidden_layers - dense_layers(config)
    assert [type(m).__name__ for m in get_z3_leaf_modules(model)] == [block] * sparse
