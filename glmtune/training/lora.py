"""LoRA targets, resolved to exact weights, and the coverage table that says which weights get adapters.

The family names the layers to adapt per architecture (leaf names such as `q_proj` or MLA's `kv_a_proj_with_mqa`);
they resolve here to the full names of the model's `nn.Linear` modules, so attention, the dense MLP of the first
layers and the shared experts are each hit where they are. The routed experts of an MoE are fused 3-D tensors
(`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`), adapted only when the recipe asks (`[lora] experts`), through
peft's `target_parameters`. The router is never adapted, nor a vision tower that ships beside the text model (an
image-text-to-text class trained on text: its modules are never searched for targets).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from glmtune.errors import UsageError
from glmtune.families import Family

QUANTIZED_LINEAR = ("Linear8bitLt", "Linear4bit")  # bitsandbytes' layers, which LoRA wraps like nn.Linear
GROUPS = ("attention", "dense MLP", "shared experts", "routed experts", "router", "vision", "other")
VISION_TOWERS = ("visual", "vision_tower", "vision_model")  # transformers' names for a vision encoder


@dataclass(frozen=True)
class LoraTargets:
    modules: list[str]  # full names of the linear modules LoRA wraps
    parameters: list[str]  # full names of the fused expert tensors LoRA adapts (peft target_parameters)
    leaves: list[str]  # the leaf names they were resolved from


def group_of(name: str) -> str:
    """The module group of a parameter or module path, by transformers' GLM naming (no family asked)."""
    parts = name.split(".")
    if any(part in VISION_TOWERS for part in parts):
        return "vision"
    if "experts" in parts:
        return "routed experts"
    if "shared_experts" in parts:
        return "shared experts"
    if "mlp" in parts:
        after = parts[parts.index("mlp") + 1 : parts.index("mlp") + 2]
        return "router" if after == ["gate"] else "dense MLP"
    if "indexer" in parts:  # DSA's indexer picks positions and has its own loss: not adapted, counted apart
        return "other"
    if any(part.endswith("attn") for part in parts):
        return "attention"
    return "other"


def lora_target_modules(model, family: Family, requested: list[str] | str) -> list[str]:
    """Leaf names LoRA wraps: the family's for this architecture, or the recipe's; each must match a linear layer."""
    model_type = model.config.model_type
    if requested == "auto":
        if model_type not in family.lora_targets:
            raise UsageError(
                f"lora.targets: no default targets for model_type {model_type!r}; list them in lora.targets"
            )
        targets = list(family.lora_targets[model_type])
    else:
        targets = list(requested)
    linear_names = {name.rsplit(".", 1)[-1] for name in _linear_modules(model)}
    missing = [t for t in targets if t not in linear_names]
    if missing:
        raise UsageError(
            f"lora.targets: {', '.join(missing)} match no linear layer of this {model_type} model; "
            f"available: {', '.join(sorted(linear_names))}"
        )
    return targets


def resolve_targets(model, family: Family, requested: list[str] | str, experts: bool) -> LoraTargets:
    """The exact modules (and, with `experts`, fused expert tensors) LoRA adapts."""
    leaves = lora_target_modules(model, family, requested)
    modules = [name for name in _linear_modules(model) if name.rsplit(".", 1)[-1] in leaves]
    parameters = fused_expert_tensors(model) if experts else []
    if experts and not parameters:
        raise UsageError(
            f"lora.experts: this {model.config.model_type} model has no fused routed experts; set lora.experts = false"
        )
    return LoraTargets(modules, parameters, leaves)


def fused_expert_tensors(model) -> list[str]:
    """The routed experts' fused 3-D parameters (transformers 5 stores every expert of a layer in one tensor)."""
    return [
        name
        for name, parameter in model.named_parameters()
        if _ndim(parameter) == 3 and "experts" in name and group_of(name) != "vision"
    ]


def coverage_rows(model, targets: LoraTargets) -> list[list[str]]:
    """Per module group: weight matrices, how many are adapted, base parameters and LoRA parameters.
    `model` is the peft-wrapped model; names are compared without peft's prefixes."""
    adapted = set(targets.modules) | set(targets.parameters)
    rows = {group: [0, 0, 0, 0] for group in GROUPS}
    for name, parameter in model.named_parameters():
        name = base_name(name)
        row = rows[group_of(name)]
        if "lora_" in name:
            row[3] += _numel(parameter)
            continue
        row[2] += _numel(parameter)
        if _ndim(parameter) >= 2:
            row[0] += 1
            owner = name if _ndim(parameter) == 3 else name.rsplit(".", 1)[0]
            row[1] += owner in adapted
    return [
        [group, f"{n}", f"{a}", f"{p:,}", f"{lora:,}"] for group, (n, a, p, lora) in rows.items() if n or p
    ]


COVERAGE_COLUMNS = ("group", "weights", "adapted", "parameters", "LoRA parameters")


def base_name(name: str) -> str:
    """A parameter name of a peft-wrapped model as the base model calls it."""
    name = name.removeprefix("base_model.model.")
    return ".".join(part for part in name.split(".") if part != "base_layer")


def _linear_modules(model) -> Iterable[str]:
    """Full names of the linear layers outside a vision tower."""
    import torch

    return [
        name
        for name, module in model.named_modules()
        if (isinstance(module, torch.nn.Linear) or type(module).__name__ in QUANTIZED_LINEAR)
        and group_of(name) != "vision"
    ]


def _ndim(parameter) -> int:
    """Dimensions of a parameter, also when ZeRO-3 has partitioned it (then its data is a flat shard)."""
    return len(getattr(parameter, "ds_shape", parameter.shape))


def _numel(parameter) -> int:
    return parameter.ds_numel if hasattr(parameter, "ds_numel") else parameter.numel()
