"""Training on the builtin tiny GLM: what trains changes, what is frozen does not, loss falls, data is reused."""

import json

import pytest
import torch
from conftest import ROOT, write_recipe
from safetensors.torch import load_file

from glmtune.checkpoints.load import load_model
from glmtune.data.prepare import prepare_data
from glmtune.recipe_files import load_recipe
from glmtune.training.method import apply_method
from glmtune.training.train import fit, train, training_arguments

DEMO = ROOT / "recipes" / "demo.toml"


def demo_recipe(tmp_path, *overrides):
    return load_recipe(DEMO, [f"run.output_dir={tmp_path}", *overrides])


def test_lora_trains_adapter_and_leaves_base_untouched(tmp_path, tiny_dir, tokenizer, glm4):
    recipe = demo_recipe(tmp_path, "train.max_steps=8", "train.logging_steps=1")
    prepared = prepare_data(recipe.data, glm4, tokenizer, tmp_path / "data")
    model = apply_method(load_model(tiny_dir), recipe, glm4)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = training_arguments(recipe, tmp_path / "run" / "checkpoints", has_eval=False)
    trainer = fit(model, tokenizer, prepared, args, tmp_path / "run")
    after = dict(model.named_parameters())
    lora_b = [name for name in before if "lora_B" in name]
    frozen = [name for name in before if "lora_" not in name]
    assert lora_b and frozen
    assert all(not torch.equal(before[name], after[name]) for name in lora_b)
    assert all(torch.equal(before[name], after[name]) for name in frozen)
    assert all(not after[name].requires_grad for name in frozen)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]


def test_full_fine_tuning_changes_the_weights(tmp_path, tiny_dir):
    run_dir = train(
        demo_recipe(tmp_path, "method.kind='full'", "train.max_steps=3", "train.learning_rate=1e-3")
    )
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["weights"] == "model" and run["method"] == "full"
    base = load_file(tiny_dir / "model.safetensors")
    tuned = load_file(run_dir / "model" / "model.safetensors")
    assert set(base) == set(tuned)
    assert any(not torch.equal(base[name], tuned[name]) for name in base)
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file() and (run_dir / "recipe.toml").is_file()
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_prepared_data_is_reused_until_something_changes(tmp_path, tokenizer, glm4):
    recipe = demo_recipe(tmp_path)
    assert not prepare_data(recipe.data, glm4, tokenizer, tmp_path / "data").reused
    again = prepare_data(recipe.data, glm4, tokenizer, tmp_path / "data")
    assert again.reused and len(again.splits["train"]) == again.stats["train"]["samples"]
    changed = demo_recipe(tmp_path, "data.max_length=128")
    assert not prepare_data(changed.data, glm4, tokenizer, tmp_path / "data").reused


def test_batches_are_padded_to_their_longest_sample(tmp_path, tokenizer, glm4):
    from glmtune.training.train import collator

    prepared = prepare_data(demo_recipe(tmp_path).data, glm4, tokenizer, tmp_path / "data")
    rows = [prepared.splits["train"][i] for i in range(4)]
    batch = collator(tokenizer)(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (4, longest)
    shortest = min(range(4), key=lambda i: len(rows[i]["input_ids"]))
    assert (
        batch["labels"][shortest, -1] == -100 and batch["attention_mask"][shortest, -1] == 0
    )  # right padding


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    train(demo_recipe(tmp_path), dry_run=True)
    captured = capsys.readouterr()
    assert "[model]" in captured.out and "trainable parameters" in captured.err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("recipe_file", sorted((ROOT / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_dry_runs(tmp_path, recipe_file, capsys):
    # Real-model recipes point at folders users download; the tiny model stands in for the architecture here.
    recipe = load_recipe(recipe_file, [f"run.output_dir={tmp_path}", "model.path='builtin:tiny-glm4'"])
    train(recipe, dry_run=True)
    assert "trainable parameters" in capsys.readouterr().err


def test_unknown_lora_target_is_refused(tmp_path):
    from glmtune.errors import UsageError

    with pytest.raises(UsageError, match="lora.targets: query_key_value match no linear layer"):
        train(demo_recipe(tmp_path, "lora.targets=['query_key_value']"), dry_run=True)


def test_keep_best_with_eval_split(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"context": f"q{i}", "target": f"a{i}"}) + "\n" for i in range(8)))
    recipe_file = write_recipe(
        tmp_path,
        f"""
[run]
output_dir = "{tmp_path / "runs"}"
[model]
path = "builtin:tiny-glm4"
[data]
train = ["d.jsonl"]
eval = ["d.jsonl"]
[train]
max_steps = 6
eval_steps = 2
save_steps = 2
keep_best = true
batch_size = 4
learning_rate = 1e-3
""",
    )
    run_dir = train(load_recipe(recipe_file))
    summary = json.loads((run_dir / "run.json").read_text())["summary"]
    assert "best_eval_loss" in summary and summary["best_checkpoint"].startswith("checkpoint-")
