"""How a saved model folder finds its class in a fresh process without glmtune.

transformers' own classes need nothing. A class transformers does not ship (glmtune's ChatGLM-6B v1 port) travels
as remote code: its module file is copied into the folder and config.json's auto_map points AutoConfig and
AutoModelForCausalLM at it, which then load it with trust_remote_code=True. A tokenizer class transformers does
not ship (the SentencePiece unigram kind's) copies its own module file on `save_pretrained` and writes the
tokenizer_config.json auto_map for AutoTokenizer (it is registered for that auto class).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelCode:
    """How a fresh process finds a saved model's class."""

    class_name: str
    base_import: (
        str  # a line that imports the class as BaseModel, from transformers or from the folder's module
    )
    auto_map: dict[str, str]  # config.json auto_map entries
    files: tuple[Path, ...]  # module files the folder carries as remote code

    @property
    def remote(self) -> bool:
        return bool(self.files)

    def describe(self) -> str:
        if self.remote:
            return f"{self.class_name} from the folder's own code: load it with trust_remote_code=True"
        return f"transformers' {self.class_name}, no remote code"


def model_code(model) -> ModelCode:
    """transformers' own class, or the class's module file to copy beside the weights."""
    import transformers

    model_class = type(model)
    name = model_class.__name__
    if getattr(transformers, name, None) is model_class:
        return ModelCode(name, f"from transformers import {name} as BaseModel", {}, ())
    source = Path(str(sys.modules[model_class.__module__].__file__))
    module = source.stem
    return ModelCode(
        name,
        f"from .{module} import {name} as BaseModel",
        {"AutoConfig": f"{module}.{type(model.config).__name__}", "AutoModelForCausalLM": f"{module}.{name}"},
        (source,),
    )


def save_with_code(model, folder: Path, code: ModelCode, **save_kwargs) -> None:
    """`save_pretrained` plus what a fresh process needs to find the class (auto_map and module files)."""
    if code.auto_map:
        model.config.auto_map = {**(getattr(model.config, "auto_map", None) or {}), **code.auto_map}
    model.save_pretrained(folder, **save_kwargs)
    for source in code.files:
        shutil.copy2(source, folder / source.name)
