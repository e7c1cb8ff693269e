"""Open models and tokenizers: a recipe's base (`open_base`, once per command), run directories and exports.

Nothing here downloads: a path must be a local folder (or a builtin tiny model). Pickled weights are refused unless
the recipe allows them, and remote code runs only when the recipe turns it on. An original remote-code folder loads
through its family's weight layout (`glmtune.checkpoints.original`), mapped in memory, never through its code. The
families' own architectures are registered with the Auto classes before any Auto load, so folders saved with them
load like native ones.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune.checkpoints.integrity import check_model_folder, loading, trained_run
from glmtune.errors import UsageError
from glmtune.families import (
    Family,
    auto_model_class,
    detect_family,
    get_family,
    read_json,
    register_architectures,
)
from glmtune.recipe import ModelSection
from glmtune.rundir import is_run_dir, read_run


@dataclass(frozen=True)
class Base:
    """A base model opened once: its folder, family and tokenizer, and how the recipe lets its weights load.

    Every command that starts from a base (prepare, train and its dry run, bench) opens it with `open_base` and
    hands this object on; nothing downstream resolves the path, the family or the tokenizer again."""

    path: Path
    family: Family
    tokenizer: Any
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def load_model(self, *, dtype: str = "auto", quantization_config: Any = None):
        return load_model(
            self.path,
            dtype=dtype,
            trust_remote_code=self.trust_remote_code,
            allow_pickle=self.allow_pickle,
            quantization_config=quantization_config,
            family=self.family,
        )

    def meta_model(self):
        """The architecture without weights (meta device): counting parameters of a 9B model costs nothing."""
        import torch

        config = load_config(self.path, self.trust_remote_code, self.family)
        auto_class = auto_model_class(config.model_type)
        with torch.device("meta"):
            return auto_class.from_config(config, trust_remote_code=self.trust_remote_code)


def open_base(model: ModelSection) -> Base:
    """The recipe's [model]: its folder (builtin, native or original layout), family and tokenizer, resolved once."""
    path = resolve_model_path(model.path)
    family = detect_family(path) if model.family == "auto" else get_family(model.family)
    tokenizer = load_tokenizer(path, model.trust_remote_code, family)
    return Base(path, family, tokenizer, model.trust_remote_code, model.allow_pickle)


def resolve_model_path(path: str, key: str = "model.path", *, weights: bool = True) -> Path:
    """The local folder `path` names; with `weights` False (`glmtune render`), a folder of config and template
    files is enough."""
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
    if weights:
        check_model_folder(folder)
    return folder


def register_ports() -> None:
    """Make glmtune's own architectures (the families' ports) known to the Auto classes."""
    register_architectures()


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
        with loading(folder, "tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=trust_remote_code, local_files_only=True
            )
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
    """A model that generates text, from a local folder, built by the Auto class of the family its model_type
    belongs to (a causal LM for most). An original-layout folder loads through its family's weight
    layout (default family: detected), mapped in memory, so its remote code is never needed (trust_remote_code is
    not used for it)."""
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
    auto_class = auto_model_class(str(read_json(folder / "config.json").get("model_type")))
    with loading(folder, "model"):
        return auto_class.from_pretrained(
            folder,
            dtype=torch_dtype(dtype),
            trust_remote_code=trust_remote_code,
            use_safetensors=has_safetensors,
            quantization_config=quantization_config,
            local_files_only=True,
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
    with loading(folder, "config"):
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)


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
        trained_run(source)
        return _load_run(source, dtype=dtype, merge=merge)
    if not (source / "config.json").is_file():
        raise UsageError(
            f"{source}: neither a glmtune run directory (run.json) nor a model folder (config.json)"
        )
    check_model_folder(source)
    base = open_base(ModelSection(path=str(source)))
    return Loaded(base.load_model(dtype=dtype).eval(), base.tokenizer, base.family, source, None)


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


@contextlib.contextmanager
def exact_lora_targets():
    """peft as glmtune uses it: the adapter's target modules and parameters exactly as written.

    peft (0.21) rewrites, on transformers 5, any `gate_proj`/`up_proj`/`down_proj` target of an MoE model onto the
    fused routed experts (its conversion of transformers-4 adapters), which would strip the adapters of the dense
    MLP and the shared experts and adapt the experts unasked. glmtune names every target in full itself (and writes
    adapters that way), so that conversion is switched off while peft builds or loads one."""
    from peft.utils import transformers_weight_conversion as conversion

    original = conversion.convert_peft_config_for_transformers
    conversion.convert_peft_config_for_transformers = lambda *args, **kwargs: None
    try:
        yield
    finally:
        conversion.convert_peft_config_for_transformers = original


def load_base_with_adapter(run: dict[str, Any], run_dir: Path, *, dtype: str, merge: bool):
    """Base + the run's adapter; the loading switches come from the run's recipe.toml, never from run.json."""
    from peft import PeftModel

    from glmtune.rundir import run_recipe

    switches = run_recipe(run_dir).model
    base = load_model(
        base_model_folder(run),
        dtype=dtype,
        allow_pickle=switches.allow_pickle,
        trust_remote_code=switches.trust_remote_code,
        family=get_family(run["family"]),
    )
    with loading(run_dir / "adapter", "adapter"), exact_lora_targets():
        model = PeftModel.from_pretrained(base, run_dir / "adapter", local_files_only=True)
    return model.merge_and_unload() if merge else model
