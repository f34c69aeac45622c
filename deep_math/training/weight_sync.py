"""The policy weights as the generation server needs them: full base-model names and values.

With peft, each LoRA-wrapped weight is yielded as a NEW tensor W + sum of the active adapters'
deltas (B @ A * scaling), computed out of place in float32 and cast to W's dtype; the training
model is never modified. (Merging into the live model and unmerging afterwards, as TRL does for
vLLM, drifts frozen bf16 base weights a little on every sync, and yields views that change back
under a consumer that reads them late, such as vLLM's packed NCCL broadcast closing a chunk after
the generator has finished.) Names are the base model's (`model.layers.0.self_attn.q_proj.weight`).
Under DeepSpeed ZeRO-2 every rank holds the full parameters, so reading them needs no gather
(ZeRO-3 is not supported here).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def _is_peft(model: Any) -> bool:
    return hasattr(model, "merge_adapter") and hasattr(model, "peft_config")


def merged_weight(layer: Any, weight: torch.Tensor) -> torch.Tensor:
    """`weight` (a LoRA layer's base weight) plus its active, unmerged adapters' deltas, new tensor."""
    merged = weight.detach().to(torch.float32, copy=True)
    if not getattr(layer, "merged", False):
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                merged += layer.get_delta_weight(adapter).to(torch.float32)
    return merged.to(weight.dtype)


def iter_policy_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` for every parameter of the (merged) base model, tied weights once.

    Without peft the tensors are the live parameters' data (consume each before the next step);
    LoRA-wrapped weights are fresh tensors (see the module docstring)."""
    if not _is_peft(model):
        for name, param in model.named_parameters():
            yield name, param.data
        return
    from peft.tuners.lora import LoraLayer

    prefix = getattr(model, "prefix", "lora_")
    lora_layers = {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            clean = name.removeprefix("base_model.model.").replace(".base_layer", "")
            if prefix in clean or "original_module" in clean:
                continue
            owner, _, leaf = name.rpartition(".")
            layer = (
                lora_layers.get(owner.removesuffix(".base_layer")) if owner.endswith(".base_layer") else None
            )
            if layer is not None and leaf == "weight":
                yield clean, merged_weight(layer, param.data)
            else:
                yield clean.replace("modules_to_save.default.", ""), param.data
