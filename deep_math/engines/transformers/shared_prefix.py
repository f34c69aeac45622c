"""Batched decoding over one shared prompt prefix without copying it per row (CPU).

Every agent prompt starts with the same system prompt + few-shot examples (~1,000 tokens). A
plain KV cache holds that prefix once per row, so a batch of 16 reads (and, growing by
`torch.cat`, rewrites) 16 copies of it in every layer at every step: for SmolLM2-135M that is
~0.8 GB of memory traffic per decoding step, more than the matmuls cost.

`SharedPrefixCache` keeps the prefix's keys/values once (batch dimension 1) and each row's own
tokens in a per-row buffer that grows by doubling (written in place, no per-step concatenation).
Attention is computed in two parts and merged exactly ("cascade" attention): softmax over
[prefix | suffix] = a weighted sum of the softmax over each part, weighted by their
log-sum-exps. The prefix part folds all rows and all query heads of a KV-head group into one
query matrix, so the prefix is read once per layer per step whatever the batch size.

The cache is only valid with the attention registered in `deep_math.engines.transformers.attention`,
which runs the cascade while `active(cache)` is in effect (`TransformersEngine` does both).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import CacheLayerMixin

_ACTIVE: contextvars.ContextVar[SharedPrefixCache | None] = contextvars.ContextVar(
    "deep_math_shared_prefix", default=None
)

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


class SharedPrefixLayer(CacheLayerMixin):
    """One layer: the shared prefix K/V (1, H, P, D) + the rows' own K/V in a growing buffer.
    `keys`/`values` are views of the rows' part only (B, H, S, D); `get_seq_length` is P + S."""

    is_sliding = False

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, batch: int):
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        self.batch = batch
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.dtype, self.device = prefix_keys.dtype, prefix_keys.device
        self.is_initialized = True
        self._views()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # the prefix initializes the layer

    def _views(self) -> None:
        if self._k is None:
            shape = (self.batch, self.prefix_keys.shape[1], 0, self.prefix_keys.shape[3])
            self.keys = self.prefix_keys.new_empty(shape)
            self.values = self.prefix_values.new_empty(shape)
        else:
            self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def _buffers(self, batch: int, length: int, zeros: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh key/value buffers for `batch` rows with room for `length` tokens and as many
        again (at least 64 more), so appends stay amortized O(1)."""
        like = self.prefix_keys
        shape = (batch, like.shape[1], max(2 * length, length + 64), like.shape[3])
        new = like.new_zeros if zeros else like.new_empty
        return new(shape), new(shape)

    def _grow(self, need: int) -> None:
        k, v = self._buffers(self.batch, need)
        if self._k is not None and self.length:
            k[:, :, : self.length] = self._k[:, :, : self.length]
            v[:, :, : self.length] = self._v[:, :, : self.length]
        self._k, self._v = k, v

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[2]
        if self._k is None or self.length + n > self._k.shape[2]:
            self._grow(self.length + n)
        self._k[:, :, self.length : self.length + n] = key_states
        self._v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[2] + self.length

    def get_max_length(self) -> int:
        return -1

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.batch = len(indices)
        if self._k is not None:
            self._k, self._v = self._k[indices], self._v[indices]
        self._views()

    def shorten_prefix(self, n: int) -> None:
        """Share only the first `n` prefix tokens; the rest become every row's own first tokens
        (copied per row, ahead of the rows' tokens)."""
        moved = self.prefix_keys.shape[2] - n
        if moved <= 0:
            return
        k, v = self._buffers(self.batch, moved + self.length)
        k[:, :, :moved] = self.prefix_keys[:, :, n:]
        v[:, :, :moved] = self.prefix_values[:, :, n:]
        if self.length:
            k[:, :, moved : moved + self.length] = self.keys
            v[:, :, moved : moved + self.length] = self.values
        self.prefix_keys, self.prefix_values = self.prefix_keys[:, :, :n], self.prefix_values[:, :, :n]
        self._k, self._v, self.length = k, v, self.length + moved
        self._views()

    def append_rows(self, other: SharedPrefixLayer) -> None:
        """Add `other`'s rows (same prefix) after ours. The shorter side's own tokens are
        right-aligned behind zero columns, so both sides must mask those columns (the engine
        inserts matching padding into its attention mask)."""
        length = max(self.length, other.length)
        batch = self.batch + other.batch
        k, v = self._buffers(batch, length, zeros=True)
        for rows, layer in ((slice(0, self.batch), self), (slice(self.batch, batch), other)):
            if layer.length:
                k[rows, :, length - layer.length : length] = layer.keys
                v[rows, :, length - layer.length : length] = layer.values
        self._k, self._v, self.length, self.batch = k, v, length, batch
        self._views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def reset(self) -> None:
        self.length = 0
        self._views()


class SharedPrefixCache(DynamicCache):
    """A generate-compatible cache over `layers` of prefix (key, value) pairs, each (1, H, P, D),
    for `batch` rows. Use inside `active(cache)`."""

    def __init__(self, prefix_layers: Sequence[tuple[torch.Tensor, torch.Tensor]], batch: int):
        super(DynamicCache, self).__init__(layers=[SharedPrefixLayer(k, v, batch) for k, v in prefix_layers])

    @property
    def prefix_length(self) -> int:
        return self.layers[0].prefix_keys.shape[2]

    def shorten_prefix(self, n: int) -> None:
        """Share only the first `n` prefix tokens from now on (see SharedPrefixLayer)."""
        for layer in self.layers:
            layer.shorten_prefix(n)

    def append_rows(self, other: SharedPrefixCache) -> None:
        """Add the rows of `other`, a cache over the very same prefix tensors (see
        `SharedPrefixLayer.append_rows` for the alignment)."""
        if any(a.prefix_keys is not b.prefix_keys for a, b in zip(self.layers, other.layers, strict=True)):
            raise ValueError("append_rows: the caches do not share one prefix")
        for a, b in zip(self.layers, other.layers, strict=True):
            a.append_rows(b)


@contextlib.contextmanager
def active(cache: SharedPrefixCache | None) -> Iterator[None]:
    """Route this thread's attention calls through `cache`'s cascade while inside."""
    token = _ACTIVE.set(cache)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current(module: torch.nn.Module) -> SharedPrefixLayer | None:
    """The active cache's layer for this attention module, if any."""
    cache = _ACTIVE.get()
    if cache is None:
        return None
    idx = getattr(module, "layer_idx", None)
    return cache.layers[idx] if idx is not None and idx < len(cache.layers) else None


def _bool_mask(mask: torch.Tensor | None, prefix: int, total: int) -> torch.Tensor | None:
    """The suffix columns of the model's (B, 1, q, P + S) mask, as booleans."""
    if mask is None:
        return None
    part = mask[..., prefix:total]
    return part if part.dtype == torch.bool else part > float("-inf")


def cascade_attention(
    layer: SharedPrefixLayer,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """softmax(q [Kp | Ks]^T) [Vp | Vs] from the two parts. query (B, Hq, q, D); key/value the
    rows' part (B, Hkv, S, D); mask (B, 1, q, P + S) or None (then every query sees the whole
    prefix and the suffix causally, bottom-right aligned). Returns (B, q, Hq, D)."""
    b, hq, q, d = query.shape
    hkv, s = key.shape[1], key.shape[2]
    g = hq // hkv
    p = layer.prefix_keys.shape[2]
    scale = scaling if scaling is not None else d**-0.5
    grouped = query.view(b, hkv, g, q, d)

    # Prefix: every query of every row sees all of it (padding sits after the prefix).
    folded = grouped.permute(1, 0, 2, 3, 4).reshape(1, hkv, b * g * q, d)
    out_p, lse_p = _flash_cpu(folded, layer.prefix_keys, layer.prefix_values, 0.0, False, scale=scale)
    out_p = out_p.view(hkv, b, g * q, d).transpose(0, 1)
    lse_p = lse_p.view(hkv, b, g * q).transpose(0, 1)

    # Suffix: the rows' own tokens under the padding/causal mask.
    visible = _bool_mask(attention_mask, p, p + s)
    if visible is None:
        if q > 1:
            cols = torch.arange(s, device=query.device)
            rows = torch.arange(q, device=query.device) + (s - q)
            visible = (cols[None, :] <= rows[:, None]).view(1, 1, q, s).expand(b, 1, q, s)
        else:
            visible = torch.ones((b, 1, q, s), dtype=torch.bool, device=query.device)
    visible = visible.expand(b, 1, q, s).repeat(1, 1, g, 1)  # row g*q + t is query t
    additive = torch.zeros(visible.shape, dtype=query.dtype, device=query.device).masked_fill_(
        ~visible, float("-inf")
    )
    out_s, lse_s = _flash_cpu(
        grouped.reshape(b, hkv, g * q, d), key, value, 0.0, False, attn_mask=additive, scale=scale
    )
    # The kernel reports 0 (not -inf) for a query that sees no suffix key: mask it out here.
    lse_s = lse_s.masked_fill(~visible.any(-1), float("-inf"))

    lse = torch.logaddexp(lse_p, lse_s)
    w_p = (lse_p - lse).exp().unsqueeze(-1)
    w_s = (lse_s - lse).exp().unsqueeze(-1)
    out = w_p * out_p + w_s * out_s.nan_to_num(0.0)  # (B, Hkv, G*q, D)
    return out.reshape(b, hq, q, d).transpose(1, 2).contiguous().to(query.dtype)
