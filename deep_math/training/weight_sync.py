"""The policy weights as the generation server needs them: full base-model names and values.

With peft, the LoRA adapter is merged into the base weights while the tensors are read and
unmerged afterwards, and names are the base model's (`model.layers.0.self_attn.q_proj.weight`),
as TRL does for vLLM (`trl/generation/vllm_generation.py::_iter_named_params`). Under DeepSpeed
ZeRO-2 every rank holds the full parameters, so reading them needs no gather (ZeRO-3 is not
supported here).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def _is_peft(model: Any) -> bool:
    return hasattr(model, "merge_adapter") and hasattr(model, "peft_config")


def iter_policy_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` for every parameter of the (merged) base model, tied weights once.

    Tensors are views of the live parameters: consume each before the generator resumes."""
    if not _is_peft(model):
        for name, param in model.named_parameters():
            yield name, param.data
        return
    prefix = getattr(model, "prefix", "lora_")
    with torch.no_grad():
        model.merge_adapter()
        try:
            for name, param in model.named_parameters():
                name = name.removeprefix("base_model.model.").replace(".base_layer", "")
                if prefix in name or "original_module" in name:
                    continue
                yield name.replace("modules_to_save.default.", ""), param.data
        finally:
            model.unmerge_adapter()
