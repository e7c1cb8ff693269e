"""`glmtune export`: a merged full model that loads with plain transformers, verified before it is put in place.

LoRA is merged into the base reloaded at full precision (never into quantized weights). The folder gets sharded
safetensors, the tokenizer with its chat template, a generation_config.json with the family's stop tokens, a model
card, and a small `modeling_glmtune_chat.py` so the ChatGLM snippet `AutoModel.from_pretrained(out,
trust_remote_code=True).chat(tokenizer, query, history)` works too. A model whose class transformers does not ship
(glmtune's ChatGLM-6B v1 port) takes its module file along as remote code, with config.json's auto_map pointing the
Auto classes at it. Everything is written to a temporary folder and renamed into place only after the reloaded
export's logits matched base + adapter.

`--layout original` (for a run whose base is an original remote-code ChatGLM2/3 / GLM-4-9B-chat folder) writes the
merged weights back under the original parameter names, with the base's config.json, tokenizer and code files, for
the tools that expect that layout; it is verified the same way, reloaded through glmtune's own conversion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glmtune.checkpoints.load import (
    base_model_folder,
    load_base_with_adapter,
    load_model,
    load_tokenizer,
    quiet_libraries,
)
from glmtune.checkpoints.original import is_original_folder, save_original_layout, stamp_native
from glmtune.checkpoints.remote_code import model_code, save_with_code
from glmtune.console import term
from glmtune.data.render import render_conversation
from glmtune.errors import UsageError
from glmtune.families import Family, Message, get_family, original_layout_types
from glmtune.recipe import GenerationSection, Recipe
from glmtune.rundir import is_run_dir, read_run, run_recipe, staged_dir

CHAT_MODULE = "modeling_glmtune_chat"
LOGITS_ATOL = 1e-4  # fp32: merging reorders a few additions, nothing more
LAYOUTS = ("native", "original")  # transformers' own class | the base's remote-code ChatGLM parameter names


def export_run(run_dir: Path, out: Path, layout: str = "native") -> Path:
    quiet_libraries()
    if layout not in LAYOUTS:
        raise UsageError(f"--layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    run = _completed_run(run_dir)
    if layout == "original":
        _check_original_base(run)
    family = get_family(run["family"])
    recipe = run_recipe(run_dir)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    probes = probe_inputs(family, tokenizer, run_dir)
    model, expected = _merged_model(run, run_dir, probes)
    with staged_dir(out) as staging:
        if layout == "original":
            save_original_layout(
                model.state_dict(), base_model_folder(run), family, staging,
                dtype=_base_dtype(run), max_shard_size=recipe.export.max_shard_size,
            )  # fmt: skip
        else:
            save_export(model, tokenizer, family, run, recipe, staging)
        del model
        worst = verify_export(staging, probes, expected, _base_dtype(run))
    term.ok(
        f"exported to {out} ({layout} layout) — reloaded logits match base + adapter (max |Δ| {worst:.2e})"
    )
    return out


def _completed_run(run_dir: Path) -> dict[str, Any]:
    if not is_run_dir(run_dir):
        raise UsageError(
            f"{run_dir}: not a glmtune run directory (no run.json); give the folder `glmtune train` wrote"
        )
    run = read_run(run_dir)
    if run.get("status") != "complete":
        raise UsageError(
            f"{run_dir}: training has not completed (status {run.get('status')!r}); nothing to export"
        )
    return run


def _check_original_base(run: dict[str, Any]) -> None:
    base = base_model_folder(run)
    if not is_original_folder(base):
        raise UsageError(
            f"--layout original: the base model {base} is not in an original remote-code layout (config.json "
            f"model_type {', '.join(sorted(original_layout_types()))}); export it with --layout native"
        )


def _merged_model(run: dict[str, Any], run_dir: Path, probes):
    """The merged fp32 model and the logits of base + adapter on the probes, computed before merging."""
    if run["weights"] == "model":
        model = load_model(run_dir / "model", dtype="float32")
        return model.eval(), _logits(model.eval(), probes)
    model = load_base_with_adapter(run, run_dir, dtype="float32", merge=False).eval()
    expected = _logits(model, probes)
    merged = model.merge_and_unload().eval()
    worst = _max_diff(_logits(merged, probes), expected)
    if worst > LOGITS_ATOL:
        raise RuntimeError(f"merged logits differ from base + adapter by {worst:.2e}; the merge is wrong")
    return merged, expected


def probe_inputs(family: Family, tokenizer, run_dir: Path) -> list[list[int]]:
    """A few training samples (or a fixed conversation) to compare logits on."""
    data = run_dir / "data" / "train"
    if data.is_dir():
        from datasets import load_from_disk

        return [row["input_ids"] for row in load_from_disk(str(data)).select(range(3))]
    messages = [Message("user", "你好，你是谁？ Who are you?"), Message("assistant", "I am a GLM model.")]
    return [render_conversation(messages, family, tokenizer).ids]


def _logits(model, probes: list[list[int]]):
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits.float() for ids in probes]


def _max_diff(actual, expected) -> float:
    return max(float((a - e).abs().max()) for a, e in zip(actual, expected, strict=True))


def save_export(model, tokenizer, family: Family, run: dict[str, Any], recipe: Recipe, folder: Path) -> None:
    import torch

    base_dtype = _base_dtype(run)
    model = model.to(getattr(torch, base_dtype))
    stamp_native(model, tokenizer, family, generation_kwargs(recipe.generation))
    code = model_code(model)
    model.config.auto_map = {"AutoModel": f"{CHAT_MODULE}.GlmtuneChatModel"}
    save_with_code(model, folder, code, max_shard_size=recipe.export.max_shard_size)
    if not tokenizer.chat_template:
        tokenizer.chat_template = family.chat_template
    tokenizer.save_pretrained(folder)
    (folder / f"{CHAT_MODULE}.py").write_text(
        CHAT_CODE.replace("BASE_IMPORT", code.base_import), encoding="utf-8"
    )
    card = _model_card(run, family, type(model).__name__, base_dtype, remote=code.remote)
    (folder / "README.md").write_text(card, encoding="utf-8")


def generation_kwargs(generation: GenerationSection) -> dict[str, Any]:
    """Settings for generate(); sampling knobs only when sampling, as transformers rejects them otherwise."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": generation.max_new_tokens,
        "do_sample": generation.do_sample,
        "repetition_penalty": generation.repetition_penalty,
    }
    if generation.do_sample:
        kwargs |= {"temperature": generation.temperature, "top_p": generation.top_p}
    return kwargs


def _base_dtype(run: dict[str, Any]) -> str:
    config = json.loads((base_model_folder(run) / "config.json").read_text(encoding="utf-8"))
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def verify_export(folder: Path, probes, expected, saved_dtype: str = "float32") -> float:
    """Reload the written folder the way a user will (either layout) and compare its logits with base + adapter;
    weights saved below float32 are compared with a tolerance relative to the logits' scale."""
    reloaded = load_model(folder, dtype="float32").eval()
    worst = _max_diff(_logits(reloaded, probes), expected)
    tolerance = LOGITS_ATOL if saved_dtype == "float32" else 5e-2 * max(1.0, _scale(expected))
    if worst > tolerance:
        raise RuntimeError(f"the reloaded export's logits differ from base + adapter by {worst:.2e}")
    return worst


def _scale(logits) -> float:
    return max(float(x.abs().max()) for x in logits)


def _model_card(run: dict[str, Any], family: Family, base_class: str, dtype: str, remote: bool) -> str:
    trust = ", trust_remote_code=True" if remote else ""
    where = (
        "not a transformers class: it loads from the folder's own code, so even AutoTokenizer, which reads "
        "config.json, needs trust_remote_code=True"
        if remote
        else "transformers' own class, no remote code"
    )
    return f"""# Fine-tuned {family.title}

Exported by glmtune from base model `{run["base_model"]["path"]}` ({run["method"]} fine-tuning), merged and saved
as `{base_class}` in {dtype} ({where}). Stop tokens: {", ".join(family.stop_tokens)} (in generation_config.json).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(PATH{trust})
model = AutoModelForCausalLM.from_pretrained(PATH{trust})
inputs = tokenizer.apply_chat_template([{{"role": "user", "content": "你是谁"}}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

ChatGLM style (`{CHAT_MODULE}.py` adds `chat()` to the model class; it runs only with trust_remote_code=True):

```python
model = AutoModel.from_pretrained(PATH, trust_remote_code=True)
response, history = model.chat(tokenizer, "你是谁", history=[])
```
"""


CHAT_CODE = '''"""ChatGLM-style `model.chat()` on the exported model's class; written by `glmtune export`."""

BASE_IMPORT


class GlmtuneChatModel(BaseModel):
    def chat(self, tokenizer, query, history=None, role="user", max_new_tokens=256, **generate_kwargs):
        """Answer `query` after `history` (dicts with role/content, or (query, response) pairs); returns (response, history)."""
        messages = []
        for turn in history or []:
            if isinstance(turn, dict):
                messages.append({"role": turn["role"], "content": turn["content"]})
            else:
                messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
        messages.append({"role": role, "content": query})
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        output = self.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
        response = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        return response, messages + [{"role": "assistant", "content": response}]
'''
