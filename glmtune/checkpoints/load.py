"""Find and load models and tokenizers: builtin tiny models, checkpoint folders, run directories, exports.

Nothing here downloads: a path must be a local folder. Pickled weights are refused unless the recipe allows them,
and remote code runs only when the recipe turns it on. Original remote-code ChatGLM2/3 and GLM-4-9B-chat folders
load as transformers' native `GlmForCausalLM`, converted in memory, and ChatGLM-6B v1 folders as glmtune's port
`ChatGLM6BForCausalLM` (`glmtune.checkpoints.original`), never through their code. The port is registered with the Auto classes
before any Auto load, so saved and exported v1 folders (model_type "chatglm6b") load like native ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError
from glmtune.families import Family, detect_family, get_family, register_architectures
from glmtune.rundir import is_run_dir, read_run

log = logging.getLogger(__name__)


def quiet_libraries() -> None:
    """Progress bars, banners and deprecation chatter of the libraries would interleave with our output."""
    import os
    import warnings

    import torch

    # bitsandbytes warns at import about an optional kernel package; DeepSpeed warns that it fell back to the CPU.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # states the fact DeepSpeed would otherwise warn about
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings(
        "ignore", message=".*torch.distributed.* is deprecated.*", category=FutureWarning
    )  # DeepSpeed's

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_model_path(path: str, key: str = "model.path") -> Path:
    if path.startswith("builtin:"):
        from glmtune.checkpoints.tiny import builtin_path

        return builtin_path(path.removeprefix("builtin:"))
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(
            f"{key}: {path} is not a folder; point it at a local model folder you downloaded (glmtune never downloads)"
        )
    if is_run_dir(folder):
        raise UsageError(
            f"{key}: {path} is a glmtune run directory; export it first (glmtune export {path} --out DIR) "
            "and point model.path at DIR to train on top of it"
        )
    if not (folder / "config.json").is_file():
        raise UsageError(f"{key}: {path} has no config.json; it is not a model folder")
    return folder


def register_ports() -> None:
    """Make glmtune's own architectures (the families' ports) known to the Auto classes."""
    register_architectures()


def family_for(folder: Path, requested: str = "auto") -> Family:
    return detect_family(folder) if requested == "auto" else get_family(requested)


def torch_dtype(name: str):
    import torch

    if name == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    return getattr(torch, name)


def load_tokenizer(folder: Path, trust_remote_code: bool = False, family: Family | None = None):
    """The folder's tokenizer; for an original-layout ChatGLM folder, rebuilt from its tokenizer files (no remote
    code) for `family` (default: detected from the folder)."""
    from transformers import AutoTokenizer

    from glmtune.checkpoints.original import is_original_folder, load_original_tokenizer

    if is_original_folder(folder):
        tokenizer = load_original_tokenizer(folder, family or detect_family(folder))
    else:
        register_ports()  # AutoTokenizer reads config.json through AutoConfig
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(
    folder: Path,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    quantization_config: Any = None,
    family: Family | None = None,
):
    """A causal LM from a local folder. An original-layout folder loads through its family's weight layout (default
    family: detected), mapped in memory, so its remote code is never needed (trust_remote_code is not used for it)."""
    from transformers import AutoModelForCausalLM

    from glmtune.checkpoints.original import is_original_folder, load_original_model

    if is_original_folder(folder):
        return load_original_model(
            folder,
            dtype=torch_dtype(dtype),
            family=family,
            allow_pickle=allow_pickle,
            quantization_config=quantization_config,
        )
    register_ports()
    has_safetensors = any(folder.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        raise UsageError(
            f"{folder}: no .safetensors weights; pickled .bin weights load only with model.allow_pickle = true "
            "(only do that for files you trust)"
        )
    return AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=torch_dtype(dtype),
        trust_remote_code=trust_remote_code,
        use_safetensors=has_safetensors,
        quantization_config=quantization_config,
    )


def load_config(folder: Path, trust_remote_code: bool = False, family: Family | None = None):
    """The model config transformers builds the architecture from (for an original-layout folder, its family's
    loading config), e.g. for a weightless model on the meta device; the Auto classes know every config it
    returns."""
    from transformers import AutoConfig

    from glmtune.checkpoints.original import is_original_folder, loading_config, original_config

    register_ports()
    if is_original_folder(folder):
        family = family or detect_family(folder)
        return loading_config(original_config(folder, family), family)
    return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)


def lora_target_modules(model, family: Family, requested: list[str] | str) -> list[str]:
    """Module names LoRA wraps: the family's for this architecture, or the recipe's; each must match something."""
    import torch

    model_type = model.config.model_type
    if requested == "auto":
        if model_type not in family.lora_targets:
            raise UsageError(
                f"lora.targets: no default targets for model_type {model_type!r}; list them in lora.targets"
            )
        targets = list(family.lora_targets[model_type])
    else:
        targets = list(requested)
    linear_names = {
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module, torch)
    }
    missing = [t for t in targets if t not in linear_names]
    if missing:
        raise UsageError(
            f"lora.targets: {', '.join(missing)} match no linear layer of this {model_type} model; "
            f"available: {', '.join(sorted(linear_names))}"
        )
    return targets


def _is_linear(module, torch) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear8bitLt", "Linear4bit")


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    family: Family
    source: Path
    run: dict[str, Any] | None  # run.json when loaded from a run directory


def load_for_inference(source: Path, *, dtype: str = "auto", merge: bool = False) -> Loaded:
    """A model ready to generate from a run directory (base + adapter, or full weights) or a model folder,
    on the GPU when there is one."""
    loaded = _load_for_inference(source, dtype=dtype, merge=merge)
    import torch

    if torch.cuda.is_available():
        loaded.model.to("cuda")
    return loaded


def _load_for_inference(source: Path, *, dtype: str, merge: bool) -> Loaded:
    if not source.is_dir():
        raise UsageError(f"{source}: not found; give a glmtune run directory or an exported model folder")
    if is_run_dir(source):
        return _load_run(source, dtype=dtype, merge=merge)
    if not (source / "config.json").is_file():
        raise UsageError(
            f"{source}: neither a glmtune run directory (run.json) nor a model folder (config.json)"
        )
    family = detect_family(source)
    model = load_model(source, dtype=dtype, family=family)
    model.eval()
    return Loaded(model, load_tokenizer(source, family=family), family, source, None)


def _load_run(run_dir: Path, *, dtype: str, merge: bool) -> Loaded:
    run = read_run(run_dir)
    family = get_family(run["family"])
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    if run.get("weights") == "model":
        model = load_model(run_dir / "model", dtype=dtype)
    elif run.get("weights") == "adapter":
        model = load_base_with_adapter(run, run_dir, dtype=dtype, merge=merge)
    else:
        raise UsageError(
            f"{run_dir}: this run has no trained weights yet (status {run.get('status')!r}); run glmtune train first"
        )
    model.eval()
    return Loaded(model, tokenizer, family, run_dir, run)


def base_model_folder(run: dict[str, Any]) -> Path:
    folder = Path(run["base_model"]["path"])
    if not (folder / "config.json").is_file():
        raise UsageError(f"base model {folder} of this run is gone; restore it (run.json names it)")
    return folder


def load_base_with_adapter(run: dict[str, Any], run_dir: Path, *, dtype: str, merge: bool):
    from peft import PeftModel

    base = load_model(
        base_model_folder(run),
        dtype=dtype,
        allow_pickle=run.get("allow_pickle", False),
        trust_remote_code=run.get("trust_remote_code", False),
        family=get_family(run["family"]),
    )
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    return model.merge_and_unload() if merge else model
