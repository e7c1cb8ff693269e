"""`glmtune export`: a merged full model that loads with plain transformers, verified before it is put in place.

LoRA is merged into the base reloaded at full precision (never into quantized weights). The folder gets sharded
safetensors, the tokenizer with its chat template (padding on the left, loadable by transformers 4.57 and 5), a
generation_config.json with the family's stop tokens and the recipe's [generation] settings, a model card
(templates/model_card.md), and `modeling_glmtune_chat.py` (templates/) so the ChatGLM snippet
`AutoModel.from_pretrained(out, trust_remote_code=True).chat(tokenizer, query, history)` works too. A model whose
class transformers does not ship (glmtune's ChatGLM-6B v1 port) takes its module file along as remote code, with
config.json's auto_map pointing the Auto classes at it. Everything is written to a temporary folder and renamed into place only after the reloaded
export's logits matched base + adapter.

`--layout original` (for a run whose base is an original remote-code ChatGLM2/3 / GLM-4-9B-chat folder) writes the
merged weights back under the original parameter names, with the base's config.json, tokenizer and code files, for
the tools that expect that layout; it is verified the same way, reloaded through glmtune's own conversion.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from glmtune.checkpoints.integrity import trained_run
from glmtune.checkpoints.load import (
    base_model_folder,
    load_base_with_adapter,
    load_model,
    load_tokenizer,
)
from glmtune.checkpoints.original import is_original_folder, save_original_layout, stamp_native
from glmtune.checkpoints.remote_code import model_code, save_with_code
from glmtune.console import quiet_libraries, term
from glmtune.data.render import render_conversation
from glmtune.errors import UsageError
from glmtune.families import Family, Message, get_family, original_layout_types
from glmtune.recipe import GenerationSection, Recipe
from glmtune.rundir import claim_output, is_run_dir, run_recipe, staged_dir

CHAT_MODULE = "modeling_glmtune_chat"  # templates/modeling_glmtune_chat.py, the `model.chat()` shim
# The shim's import line that export replaces with the exported model's class.
TEMPLATE_BASE_IMPORT = "from transformers import PreTrainedModel as BaseModel"
# Exported tokenizers and models load there too, with the same ids and answers (tests/checkpoints/test_export.py, slow tier).
TRANSFORMERS_4_CHECKED = "4.57.1"
PROBE_SAMPLES = 3  # training samples whose logits the export must reproduce
LOGITS_ATOL = 1e-4  # fp32: merging reorders a few additions, nothing more
LAYOUTS = ("native", "original")  # transformers' own class | the base's remote-code ChatGLM parameter names


def export_run(run_dir: Path, out: Path, layout: str = "native", overwrite: bool = False) -> Path:
    quiet_libraries()
    if layout not in LAYOUTS:
        raise UsageError(f"--layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    run = _completed_run(run_dir)
    out = claim_output(out, "export", overwrite=overwrite)
    if layout == "original":
        _check_original_base(run)
    family = get_family(run["family"])
    recipe = run_recipe(run_dir)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    probes = probe_inputs(family, tokenizer, run_dir)
    model, expected = _merged_model(run, run_dir, probes)
    with staged_dir(out, kind="export") as staging:
        if layout == "original":
            save_original_layout(
                model.state_dict(),
                base_model_folder(run),
                family,
                staging,
                dtype=_base_dtype(run),
                max_shard_size=recipe.export.max_shard_size,
            )
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
    run = trained_run(run_dir)
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
    """Up to three training samples (or, without any, a fixed conversation) to compare logits on."""
    data = run_dir / "data" / "train"
    if data.is_dir():
        from glmtune.data.prepare import load_split

        samples = load_split(data)
        if len(samples):
            return [row["input_ids"] for row in samples.select(range(min(PROBE_SAMPLES, len(samples))))]
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
    drop_mtp_layers(model.config)
    code = model_code(model)
    model.config.auto_map = {"AutoModel": f"{CHAT_MODULE}.GlmtuneChatModel"}
    save_with_code(model, folder, code, max_shard_size=recipe.export.max_shard_size)
    if not tokenizer.chat_template:
        tokenizer.chat_template = family.chat_template
    tokenizer.save_pretrained(folder)
    write_inference_tokenizer_config(folder / "tokenizer_config.json", tokenizer.model_input_names)
    (folder / f"{CHAT_MODULE}.py").write_text(chat_module(code.base_import), encoding="utf-8")
    card = model_card(run, family, type(model).__name__, base_dtype, remote=code.remote)
    card += serving_notes(family, _base_config(run).get("num_nextn_predict_layers", 0))
    (folder / "README.md").write_text(card, encoding="utf-8")


def write_inference_tokenizer_config(path: Path, model_input_names: list[str]) -> None:
    """Make the saved tokenizer_config.json one for inference that transformers 4 loads as well as 5.

    Left padding: batched generate() appends to every row, so each prompt must end at the last column (training
    pads right, but glmtune pads itself there). transformers 5 names its generic fast tokenizer TokenizersBackend
    and its special-token list extra_special_tokens; 4.x knows them as PreTrainedTokenizerFast and
    additional_special_tokens (a list under extra_special_tokens breaks its loading), and 5 reads both old names.
    4.x's generic tokenizer would also return token_type_ids, which generate() refuses: the inputs are named.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    config["padding_side"] = "left"
    config.setdefault("model_input_names", list(model_input_names))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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


def serving_notes(family: Family, mtp_layers: int) -> str:
    """The card's serving section: vLLM's parsers for the family, and what became of the base's MTP layers."""
    notes = []
    if family.vllm_tool_parser or family.vllm_reasoning_parser:
        flags = " ".join(
            f"--{flag} {parser}"
            for flag, parser in (
                ("tool-call-parser", family.vllm_tool_parser),
                ("reasoning-parser", family.vllm_reasoning_parser),
            )
            if parser
        )
        notes.append(
            f"Serve with vLLM (tool calls and reasoning parsed):\n\n```\nvllm serve PATH {flags}\n```\n"
        )
    if mtp_layers:
        notes.append(
            f"The base has {mtp_layers} multi-token-prediction (MTP) layer(s) (`num_nextn_predict_layers`), which "
            "transformers neither loads nor trains; this export carries none and sets `num_nextn_predict_layers` "
            "to 0, so vLLM and llama.cpp load it as a plain model (no MTP speculative decoding).\n"
        )
    return "".join(f"\n{note}" for note in notes)


def _base_config(run: dict[str, Any]) -> dict[str, Any]:
    return json.loads((base_model_folder(run) / "config.json").read_text(encoding="utf-8"))


def _base_dtype(run: dict[str, Any]) -> str:
    config = _base_config(run)
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def drop_mtp_layers(config) -> int:
    """Set the multi-token-prediction layer count (config `num_nextn_predict_layers`) to 0; returns the base's count.

    transformers builds no MTP layer (it skips those weights on load), so a merged export has none to save: with
    the base's count left in, vLLM's MTP speculative decoding and llama.cpp's converter would look for tensors that
    are not there. The card states it."""
    count = int(getattr(config, "num_nextn_predict_layers", 0) or 0)
    if count:
        config.num_nextn_predict_layers = 0
    return count


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


def _template(name: str) -> str:
    return resources.files("glmtune.checkpoints").joinpath("templates", name).read_text(encoding="utf-8")


def chat_module(base_import: str) -> str:
    """The `model.chat()` shim (templates/modeling_glmtune_chat.py) subclassing the exported model's class."""
    code = _template(f"{CHAT_MODULE}.py")
    if TEMPLATE_BASE_IMPORT not in code:
        raise RuntimeError(f"templates/{CHAT_MODULE}.py lost its line {TEMPLATE_BASE_IMPORT!r}")
    return code.replace(TEMPLATE_BASE_IMPORT, base_import)


def model_card(run: dict[str, Any], family: Family, base_class: str, dtype: str, remote: bool) -> str:
    """README.md of an export (templates/model_card.md)."""
    import transformers

    where = (
        "not a transformers class: it loads from the folder's own code, so even AutoTokenizer, which reads "
        "config.json, needs trust_remote_code=True"
        if remote
        else "transformers' own class, no remote code"
    )
    compatibility = (
        "The model's code is written for transformers 5."
        if remote
        else f"glmtune's tests check that such an export gives the same token ids and greedy answers with "
        f"transformers {TRANSFORMERS_4_CHECKED} (the last 4.x) as with transformers 5."
    )
    return Template(_template("model_card.md")).substitute(
        title=family.title,
        base_model=run["base_model"]["path"],
        method=run["method"],
        base_class=base_class,
        dtype=dtype,
        where=where,
        stop_tokens=", ".join(family.stop_tokens),
        transformers_version=transformers.__version__,
        compatibility=compatibility,
        trust=", trust_remote_code=True" if remote else "",
        auto_class=family.auto_class,
    )
