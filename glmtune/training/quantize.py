"""Single-GPU LoRA on a bitsandbytes base: LLM.int8 (8bit) or NF4 QLoRA (4bit).

The quantized weights are only ever trained through; `export` merges the adapter into the base reloaded at full
precision, never into quantized weights.
"""

from __future__ import annotations

from typing import Any


def quantization_config(kind: str, compute_dtype) -> Any:
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def prepare_for_kbit_training(model, gradient_checkpointing: bool):
    """peft's k-bit preparation (fp32 norms and head, input grads for checkpointing), plus the CPU 4-bit guard."""
    from peft import prepare_model_for_kbit_training

    disable_cpu_repacking(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def disable_cpu_repacking(model) -> None:
    # bitsandbytes repacks 4-bit weights into a CPU inference layout on the first eval-mode forward without
    # gradients; LoRA training and merging then read the repacked data as if it were NF4 and go wrong. Keep the
    # plain layout: it is what training and export expect.
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
