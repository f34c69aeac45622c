"""A CPU-friendly SDPA attention for grouped-query models with padded batches.

transformers' stock "sdpa" attention expands K/V to all query heads (`repeat_kv`, a full copy
of the KV cache in every layer at every decoding step) whenever an attention mask is present,
i.e. for every left-padded batch. On CPU that copy dominated batched decoding: for SmolLM2-135M
(9 query heads, 3 KV heads) at batch 16 and ~1,100 tokens of context, 0.52 s of a 0.77 s step
was `aten::copy_`. torch's SDPA takes `enable_gqa=True` with a mask on CPU and gives identical
results without the copy (see bench/agent_throughput.py). On other devices, and for models
without grouped KV heads, the stock implementation runs unchanged.

While a `shared_prefix.SharedPrefixCache` is active (the engine's batches over a shared prompt
prefix), this attention runs the cascade over [shared prefix | each row's own tokens] instead.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from deep_math.engines.transformers import shared_prefix

NAME = "deep_math_sdpa"


def sdpa_gqa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    layer = shared_prefix.current(module)
    if layer is not None:
        return shared_prefix.cascade_attention(layer, query, key, value, attention_mask, scaling), None
    groups = getattr(module, "num_key_value_groups", 1)
    if (
        query.device.type != "cpu"
        or groups == 1
        or kwargs.get("position_bias") is not None
        or kwargs.get("output_attentions", False)
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the attention (and its mask builder, the stock SDPA one) under NAME; idempotent."""
    AttentionInterface.register(NAME, sdpa_gqa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def use_gqa_sdpa(model: torch.nn.Module) -> bool:
    """Switch a CPU model that uses stock "sdpa" attention to NAME. Returns True if switched."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if next(model.parameters()).device.type != "cpu":
        return False
    model.set_attn_implementation(register())
    return True


def uses_gqa_sdpa(model: torch.nn.Module) -> bool:
    """True if `model` runs NAME (then `SharedPrefixCache` can be used with it)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == NAME and (
        next(model.parameters()).device.type == "cpu"
    )
