"""The GLM family registry: every family-specific fact lives in one module per family, one record each.

A record (`glmtune.families.base.Family`) holds the special tokens by name, the prompt layout (which pieces a
conversation renders to and which of them are trained), the stop tokens, the LoRA target modules per architecture,
the folders it recognises (`Signature`s over config fields, tokenizer files and the shipped chat template), its
original remote-code layout (tokenizer spec and weight mapping) and its builtin tiny checkpoints. No other module asks
which family it is; they read the record. Adding a family: one module defining `FAMILY`, one line in `_MODULES`.

Families: `glm4` (GLM-4 native, and glm-4-9b-chat in its original remote-code layout), `chatglm3` (ChatGLM3-6B,
original layout), `chatglm2` (ChatGLM2-6B, original layout) and `chatglm` (ChatGLM-6B v1, original layout or
glmtune's native port), and the thinking/XML-call releases on the shared `think_xml` format: `glm4_5` (GLM-4.5,
4.5-Air, 4.6), `glm4_7` (GLM-4.7, 4.7-Flash), `glm5` (GLM-5, 5.1), `glm5_2` (GLM-5.2), `glm5_3` (GLM-5.3-Flash).
Sources of the format facts are cited at each layout: the official chat templates (tokenizer_config.json or
chat_template.jinja) and the original `tokenization_chatglm.py`, `modeling_chatglm.py` and fine-tuning scripts of
THUDM/ChatGLM-6B, THUDM/ChatGLM2-6B, THUDM/ChatGLM3 and THUDM/GLM-4.
"""

from __future__ import annotations

from pathlib import Path

from glmtune.errors import UsageError
from glmtune.families import chatglm, chatglm2, chatglm3, glm4, glm4_5, glm4_7, glm5, glm5_2, glm5_3
from glmtune.families.base import (
    FAMILY_KEY,
    ROLES,
    Family,
    FolderFacts,
    Layout,
    Message,
    OriginalLayout,
    Piece,
    RenderOptions,
    Signature,
    TinySpec,
    TokenizerSpec,
    ToolCall,
    WeightLayout,
    read_json,
    without_reasoning,
)

__all__ = [
    "FAMILY_KEY",
    "ROLES",
    "Family",
    "FolderFacts",
    "Layout",
    "Message",
    "OriginalLayout",
    "Piece",
    "Signature",
    "TinySpec",
    "TokenizerSpec",
    "WeightLayout",
    "read_json",
    "RenderOptions",
    "ToolCall",
    "without_reasoning",
]

_MODULES = (glm4, chatglm3, chatglm2, chatglm, glm4_5, glm4_7, glm5, glm5_2, glm5_3)
REGISTRY: dict[str, Family] = {module.FAMILY.name: module.FAMILY for module in _MODULES}
GLM4, CHATGLM3, CHATGLM2, CHATGLM = glm4.FAMILY, chatglm3.FAMILY, chatglm2.FAMILY, chatglm.FAMILY


def get_family(name: str) -> Family:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"model.family: unknown family {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None


def candidates(folder: Path) -> list[Family]:
    """Every family that recognises the folder (ignoring glmtune's stamp)."""
    facts = FolderFacts.read(folder)
    return [family for family in REGISTRY.values() if family.recognises(facts)]


def detect_family(folder: Path) -> Family:
    """The family of a checkpoint folder: glmtune's own stamp (config.json `glmtune_family`), else the one record
    that recognises it. None or several is a UsageError naming the candidates and model.family."""
    facts = FolderFacts.read(folder)
    if facts.config.get(FAMILY_KEY):
        return get_family(str(facts.config[FAMILY_KEY]))
    matches = [family for family in REGISTRY.values() if family.recognises(facts)]
    if len(matches) == 1:
        return matches[0]
    model_type = facts.config.get("model_type", "")
    if matches:
        problem = f"it fits several GLM families ({', '.join(f.name for f in matches)})"
    else:
        problem = (
            f"no GLM family recognises it (model_type {model_type!r}, its tokenizer files and chat template)"
        )
    names = ", ".join(f.name for f in matches) or ", ".join(sorted(REGISTRY))
    raise UsageError(
        f"{folder / 'config.json'}: {problem}; set model.family (glmtune convert: --family) to one of {names}"
    )


def original_layout_types() -> frozenset[str]:
    """config.json model_types that mean a folder is in some family's original remote-code layout."""
    return frozenset(
        model_type
        for family in REGISTRY.values()
        for signature in family.detection
        if signature.layout == "original"
        for model_type in signature.model_types
    )


def tiny_specs() -> dict[str, tuple[Family, TinySpec]]:
    """Every builtin tiny checkpoint by name, with its family."""
    return {spec.name: (family, spec) for family in REGISTRY.values() for spec in family.tiny}


def auto_class_for(model_type: str) -> str:
    """The name of the transformers Auto class that builds a model of `model_type`: the auto_class of the family
    whose folders have it, else the causal-LM class."""
    for family in REGISTRY.values():
        if any(model_type in signature.model_types for signature in family.detection):
            return family.auto_class
    return Family.auto_class


def auto_model_class(model_type: str):
    """The transformers Auto class itself (see `auto_class_for`)."""
    import transformers

    return getattr(transformers, auto_class_for(model_type))


def register_architectures() -> None:
    """Make every family's own architectures known to the Auto classes (safe to call again)."""
    for family in REGISTRY.values():
        if family.register_architectures is not None:
            family.register_architectures()
