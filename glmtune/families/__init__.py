"""The GLM family registry: every family-specific fact lives here, one record per family.

A record holds the special tokens by name, the prompt layout (which pieces a conversation renders to and which of
them are trained), the stop tokens, the LoRA target modules per architecture and how to recognise the family in a
checkpoint folder. No other module asks which family it is; they read the record.

Families: `glm4` (GLM-4 native, and glm-4-9b-chat in its original remote-code layout), `chatglm3` (ChatGLM3-6B and
-base, original layout), `chatglm2` (ChatGLM2-6B, original layout) and `chatglm` (ChatGLM-6B v1, original layout or
glmtune's native port). Sources of the format facts are cited at each layout: the official tokenizer_config.json chat
templates and the original `tokenization_chatglm.py`, `modeling_chatglm.py` and fine-tuning scripts of
THUDM/ChatGLM-6B, THUDM/ChatGLM2-6B, THUDM/ChatGLM3 and THUDM/GLM-4.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError
from glmtune.families import chatglm, chatglm2, chatglm3, glm4
from glmtune.families.base import FAMILY_KEY, ROLES, Family, Layout, Message, Piece, Recogniser, read_json
from glmtune.families.chatglm import is_chatglm6b_config

__all__ = [
    "FAMILY_KEY", "ROLES", "Family", "Layout", "Message", "Piece", "Recogniser", "read_json", "is_chatglm6b_config",
]  # fmt: skip

GLM4, CHATGLM3, CHATGLM2, CHATGLM = glm4.FAMILY, chatglm3.FAMILY, chatglm2.FAMILY, chatglm.FAMILY
REGISTRY: dict[str, Family] = {family.name: family for family in (GLM4, CHATGLM3, CHATGLM2, CHATGLM)}


def get_family(name: str) -> Family:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"model.family: unknown family {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None


def detect_family(folder: Path) -> Family:
    """Tell the family from a checkpoint folder: glmtune's own stamp, the original layout, or the model_type."""
    config_path = folder / "config.json"
    config = read_json(config_path)
    if config.get(FAMILY_KEY):
        return get_family(str(config[FAMILY_KEY]))
    model_type = config.get("model_type", "")
    if model_type == "chatglm":
        return _detect_original(folder, config)
    for family in REGISTRY.values():
        if model_type in family.model_types:
            return family
    raise UsageError(
        f"{config_path}: cannot tell the GLM family of model_type {model_type!r}; "
        f"set model.family to one of {', '.join(sorted(REGISTRY))}"
    )


def _detect_original(folder: Path, config: Mapping[str, Any]) -> Family:
    tokenizer_config = read_json(folder / "tokenizer_config.json", required=False)
    matches = [
        f
        for f in REGISTRY.values()
        if f.recognises is not None and f.recognises(folder, config, tokenizer_config)
    ]
    if len(matches) != 1:
        candidates = ", ".join(f.name for f in matches or REGISTRY.values() if f.recognises is not None)
        raise UsageError(
            f"{folder / 'config.json'}: cannot tell which ChatGLM this original-layout checkpoint is; "
            f"set model.family (glmtune convert: --family) to one of {candidates}"
        )
    return matches[0]
