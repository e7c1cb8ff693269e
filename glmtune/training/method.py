"""The training method: LoRA (peft) on the family's target modules for the architecture, or full fine-tuning.

`apply_method` wraps a model (loaded, or weightless on the meta device for the dry run) and reports what trains.
"""

from __future__ import annotations

from glmtune.console import term
from glmtune.errors import UsageError
from glmtune.families import Family
from glmtune.recipe import Recipe

QUANTIZED_LINEAR = ("Linear8bitLt", "Linear4bit")  # bitsandbytes' layers, which LoRA wraps like nn.Linear


def apply_method(model, recipe: Recipe, family: Family, quiet: bool = False):
    """Wrap the model for the recipe's method and report what will train."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(recipe.run.seed)  # LoRA's initialisation is part of the run's reproducibility
    if recipe.method.kind == "full":
        if not quiet:
            term.step(f"full fine-tuning: {count_parameters(model, trainable=True):,} trainable parameters")
        return model
    targets = lora_target_modules(model, family, recipe.lora.targets)
    config = LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    wrapped = sum(1 for _, module in model.named_modules() if isinstance(module, LoraLayer))
    if not quiet:
        term.step(
            f"LoRA r={recipe.lora.r} on {', '.join(targets)} ({wrapped} modules): "
            f"{count_parameters(model, trainable=True):,} of {count_parameters(model):,} parameters train"
        )
    return model


def count_parameters(model, trainable: bool = False) -> int:
    """Parameters of the model (only the trainable ones if asked), whole even when ZeRO-3 has partitioned them."""
    return sum(
        p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        for p in model.parameters()
        if p.requires_grad or not trainable
    )


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
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in QUANTIZED_LINEAR
    }
    missing = [t for t in targets if t not in linear_names]
    if missing:
        raise UsageError(
            f"lora.targets: {', '.join(missing)} match no linear layer of this {model_type} model; "
            f"available: {', '.join(sorted(linear_names))}"
        )
    return targets
