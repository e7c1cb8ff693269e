"""The training method: LoRA (peft) on the weights `glmtune.training.lora` resolves for the architecture, or full
fine-tuning.

`apply_method` wraps a model (loaded, or weightless on the meta device for the dry run) and reports what trains:
for LoRA, the coverage table (module group x weights adapted x parameters). Training is text-only: a vision tower
beside the text model (an image-text-to-text class) never trains.
"""

from __future__ import annotations

from glmtune.checkpoints.load import exact_lora_targets
from glmtune.console import term
from glmtune.families import Family
from glmtune.recipe import Recipe
from glmtune.training.lora import (
    COVERAGE_COLUMNS,
    coverage_rows,
    group_of,
    lora_target_modules,
    resolve_targets,
)

__all__ = ["apply_method", "count_parameters", "lora_target_modules"]


def apply_method(model, recipe: Recipe, family: Family, quiet: bool = False):
    """Wrap the model for the recipe's method and report what will train."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(recipe.run.seed)  # LoRA's initialisation is part of the run's reproducibility
    if recipe.method.kind == "full":
        frozen = freeze_vision_tower(model)
        if not quiet:
            vision = f" (vision tower frozen: {frozen:,})" if frozen else ""
            term.step(
                f"full fine-tuning: {count_parameters(model, trainable=True):,} trainable parameters{vision}"
            )
        return model
    targets = resolve_targets(model, family, recipe.lora.targets, recipe.lora.experts)
    config = LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=targets.modules,
        target_parameters=targets.parameters or None,
        task_type="CAUSAL_LM",
    )
    with exact_lora_targets():
        model = get_peft_model(model, config)
    if not quiet:
        experts = ", routed experts" if targets.parameters else " (routed experts: lora.experts = false)"
        term.step(
            f"LoRA r={recipe.lora.r} on {', '.join(targets.leaves)}{experts}: "
            f"{count_parameters(model, trainable=True):,} of {count_parameters(model):,} parameters train"
        )
        term.table("LoRA coverage", COVERAGE_COLUMNS, coverage_rows(model, targets))
    return model


def freeze_vision_tower(model) -> int:
    """Text-only training leaves a vision tower as it was (no gradient reaches it, but weight decay would still
    shrink it); returns how many parameters were frozen."""
    frozen = 0
    for name, parameter in model.named_parameters():
        if group_of(name) == "vision" and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen += getattr(parameter, "ds_numel", parameter.numel())
    return frozen


def count_parameters(model, trainable: bool = False) -> int:
    """Parameters of the model (only the trainable ones if asked), whole even when ZeRO-3 has partitioned them."""
    return sum(
        p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        for p in model.parameters()
        if p.requires_grad or not trainable
    )
