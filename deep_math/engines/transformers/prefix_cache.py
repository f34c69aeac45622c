"""The KV cache of prompt prefixes shared across the transformers engine's batches.

Shared prompt prefixes (system prompt + few-shot examples) are prefilled once (`PrefixCache`);
on CPU a batch then attends to ONE copy of the prefix (`shared_prefix.SharedPrefixCache`,
cascade attention) instead of a copy per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from deep_math.engines.base import GenRequest
from deep_math.engines.transformers.attention import uses_gqa_sdpa
from deep_math.engines.transformers.shared_prefix import SharedPrefixCache


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of a and b, at most `limit`."""
    n = min(len(a), len(b), limit)
    if n <= 0:
        return 0
    if a[:n] == b[:n]:
        return n
    k = 0
    while a[k] == b[k]:
        k += 1
    return k


class PrefixCache:
    """KV cache of prompt prefixes shared across generate calls.

    Agent traces re-send their whole prompt at every step, and on CPU prefill is compute-bound
    (~2 s per 1,000 tokens for SmolLM2-135M here): without reuse every step of every trace pays
    again for the same system prompt + few-shot examples and for its own earlier steps. For each
    batch the longest cached prefix that all its prompts share is reused; when none is cached,
    the batch's common prefix is computed once (batch 1) and kept. The `size` most recently used
    prefixes are kept. One token of every prompt stays uncached (generate needs one new input
    position per row). Used only for models whose layers are all full attention."""

    # The shortest shared prefix worth caching. The mini template's problems share 43 tokens
    # (system prompt + chat header): at 32 its batches prefill them once and queued rows join
    # running batches; bench/mini_eval.py: 1.40x samples/s over 64, the same samples.
    MIN_TOKENS = 32

    def __init__(self, model: Any, size: int = 8):
        self.model = model
        self.size = size
        self._entries: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        config = model.config
        config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        layer_types = getattr(config, "layer_types", None) or ["full_attention"]
        self.enabled = all(t == "full_attention" for t in layer_types) and not getattr(
            config, "sliding_window", None
        )
        self.hits = self.misses = 0

    def clear(self) -> None:
        self._entries.clear()

    @staticmethod
    def _common_length(requests: Sequence[GenRequest]) -> int:
        first = requests[0].prompt_ids
        n = min(len(r.prompt_ids) for r in requests) - 1
        for r in requests[1:]:
            n = common_prefix(r.prompt_ids, first, n)
        return n

    def usable_length(self, requests: Sequence[GenRequest]) -> int:
        """Length of the prefix to reuse for this batch (0: none)."""
        if not self.enabled:
            return 0
        common = self._common_length(requests)
        if common < self.MIN_TOKENS:
            return 0
        first = requests[0].prompt_ids
        cached = [len(k) for k in self._entries if len(k) <= common and tuple(first[: len(k)]) == k]
        return max(cached) if cached else common

    def expand(self, prefix: list[int], batch: int):
        """A fresh cache holding `prefix`'s KV for `batch` rows (computed if missing): a
        `SharedPrefixCache` (one copy of the prefix, cascade attention) when the model runs our
        CPU attention, else a DynamicCache with the prefix copied into every row."""
        from transformers import DynamicCache

        key = tuple(prefix)
        layers = self._entries.pop(key, None)
        if layers is None:
            self.misses += 1
            device = next(self.model.parameters()).device
            out = self.model(
                input_ids=torch.tensor([prefix], device=device), use_cache=True, logits_to_keep=1
            )
            layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        else:
            self.hits += 1
        self._entries[key] = layers  # most recently used last
        while len(self._entries) > self.size:
            self._entries.pop(next(iter(self._entries)))
        if uses_gqa_sdpa(self.model):
            return SharedPrefixCache(layers, batch)  # the prefix stays one copy
        data = [
            (k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous())
            for k, v in layers
        ]
        return DynamicCache(data, config=self.model.config)
