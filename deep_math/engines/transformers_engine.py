"""The default engine: Hugging Face transformers `generate`, micro-batched across threads.

How a batch is generated
- Callers from many threads call `generate`; their requests go into one queue. A single worker
  thread waits up to `batch_wait_ms` after the first request for more, takes at most
  `max_batch_size`, runs ONE `model.generate` over all of them (left padding) and resolves each
  caller's futures. Errors become `EngineError` on every affected request, never fake text.
- Sampling is done per row by our own logits processor (`RowSampler`) while `generate` itself runs
  greedy: the processor applies each row's temperature, top-k and top-p, draws the row's token
  by inverse CDF from one uniform of the row's own `torch.Generator`, and hands `generate` a
  score row whose argmax is that token. So requests with different sampling params share one batch, and a
  request with a `seed` gets the same random stream whatever else is in its batch (outputs match
  up to the float differences padding can cause). Temperature 0 rows take the argmax.
- Shared prompt prefixes (system prompt + few-shot examples) are prefilled once (`PrefixCache`);
  on CPU a batch then attends to ONE copy of the prefix (`shared_prefix.SharedPrefixCache`,
  cascade attention) instead of a copy per row. Batches run in chunks and finished rows leave.
- Stop strings and max_tokens are per row too (`RowStops` stops a row early to save compute;
  finished rows are padded by `generate`). The authoritative cut is done afterwards by
  `deep_math.engines.stops.cut_generation` on the generated ids: first stop string at token
  granularity (its last token kept), first EOS (kept), or max_tokens.

Logprobs ("processed" mode, the default): log_softmax of the scores the token was drawn from —
the model's logits after temperature scaling and top-k/top-p masking (renormalized over the
kept tokens) — at the sampled id. For greedy rows that is the raw model log-probability.
"raw" mode: log_softmax of the unprocessed logits (temperature 1), like vLLM's default.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from transformers import LogitsProcessor, StoppingCriteria

from deep_math.engines import shared_prefix
from deep_math.engines.attention import NAME as ATTENTION_NAME
from deep_math.engines.attention import use_gqa_sdpa, uses_gqa_sdpa
from deep_math.engines.base import GenRequest, GenResult, SamplingParams
from deep_math.engines.batching import BatchStats, MicroBatcher
from deep_math.engines.shared_prefix import SharedPrefixCache
from deep_math.engines.stops import cut_generation, decode, result_text
from deep_math.models import load_model, load_tokenizer, resolve_device

log = logging.getLogger(__name__)

LogprobsMode = Literal["processed", "raw"]


class RowSampler(LogitsProcessor):
    """Per-row temperature / top-k / top-p sampling inside a greedy `generate`.

    Must be the last logits processor (transformers appends custom processors after its own
    defaults, and with do_sample=False it adds no warpers after them). Returns scores that are
    0 at the chosen token and -inf elsewhere, so generate's argmax picks exactly our choice.
    `logprobs` holds one (batch,) tensor per generated position."""

    def __init__(
        self,
        rows: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
        device: torch.device,
        mode: LogprobsMode = "processed",
    ):
        self.temperature = torch.tensor([r.temperature for r in rows], dtype=torch.float32, device=device)
        self.greedy = self.temperature == 0
        self.top_k = [r.top_k if r.temperature > 0 else 0 for r in rows]
        self.top_p = torch.tensor(
            [r.top_p if r.temperature > 0 else 1.0 for r in rows], dtype=torch.float32, device=device
        )
        self.generators = list(generators)
        self.mode = mode
        self.logprobs: list[torch.Tensor] = []

    def _mask_top_k(self, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        ks = [k if 0 < k < vocab else vocab for k in self.top_k]
        if all(k == vocab for k in ks):
            return scores
        kth = scores.topk(max(ks), dim=-1).values  # (B, kmax), sorted descending
        idx = torch.tensor([k - 1 for k in ks], device=scores.device).unsqueeze(1)
        threshold = kth.gather(1, idx)
        full = torch.tensor([k == vocab for k in ks], device=scores.device).unsqueeze(1)
        return scores.masked_fill((scores < threshold) & ~full, float("-inf"))

    # Candidate set sizes tried before a full sort of the vocabulary: the nucleus of a trained
    # model is usually a handful of tokens, and sorting 49k scores per row per step cost more
    # than the model's forward pass at batch 16 on CPU.
    TOP_P_CANDIDATES = (64, 1024)

    def _mask_top_p(self, scores: torch.Tensor) -> torch.Tensor:
        """Keep the smallest set of top tokens whose mass reaches top_p: a token is dropped once
        the mass of the tokens ranked before it already does (the top token is always kept;
        rows with top_p == 1 keep everything)."""
        use = self.top_p < 1
        if not bool(use.any()):
            return scores
        vocab = scores.shape[-1]
        log_total = scores.logsumexp(dim=-1, keepdim=True)
        for k in (*[c for c in self.TOP_P_CANDIDATES if c < vocab], vocab):
            top, index = scores.topk(k, dim=-1)  # sorted descending
            probs = (top - log_total).exp()
            cumulative = probs.cumsum(dim=-1)
            # Exact when the k candidates already hold top_p of the mass (every token outside
            # them is dropped); otherwise try a larger set, the last one the whole vocabulary.
            if k == vocab or bool(((cumulative[:, -1] >= self.top_p) | ~use).all()):
                drop = ((cumulative - probs) >= self.top_p.unsqueeze(1)) & use.unsqueeze(1)
                drop[:, 0] = False
                keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, index, ~drop)
                return scores.masked_fill(~(keep | ~use.unsqueeze(1)), float("-inf"))
        raise AssertionError("unreachable: the last candidate set is the whole vocabulary")

    def _draw(self, log_probs: torch.Tensor) -> torch.Tensor:
        """One token per row by inverse CDF: a single uniform from the row's own generator (so
        a seeded row draws the same stream whatever shares its batch), all rows searched at
        once over the tokens left with mass (after top-k/top-p usually a handful, so no pass over
        the vocabulary). Greedy rows take the argmax."""
        choice = log_probs.argmax(dim=-1)
        sampled = [
            row for row, g in enumerate(self.generators) if g is not None and not bool(self.greedy[row])
        ]
        if not sampled:
            return choice
        index = torch.tensor(sampled, device=log_probs.device)
        rows = log_probs[index]
        width = int(torch.isfinite(rows).sum(dim=-1).max())
        if width < rows.shape[1]:
            rows, tokens = rows.topk(width, dim=-1)
        else:
            tokens = None
        cdf = rows.double().exp().cumsum(dim=-1)
        u = torch.cat([torch.rand(1, generator=self.generators[row], dtype=torch.float64) for row in sampled])
        target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
        drawn = torch.searchsorted(cdf, target, right=True).squeeze(1)
        # Rounding can land past the last token with mass (the first to reach the total).
        drawn = torch.minimum(drawn, (cdf >= cdf[:, -1:]).int().argmax(dim=-1))
        choice[index] = drawn if tokens is None else tokens.gather(1, drawn.unsqueeze(1)).squeeze(1)
        return choice

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raw = scores.float()
        temperature = torch.where(self.greedy, torch.ones_like(self.temperature), self.temperature)
        processed = self._mask_top_p(self._mask_top_k(raw / temperature.unsqueeze(1)))
        log_probs = torch.log_softmax(processed, dim=-1)
        choice = self._draw(log_probs)
        source = log_probs if self.mode == "processed" else torch.log_softmax(raw, dim=-1)
        self.logprobs.append(source.gather(1, choice.unsqueeze(1)).squeeze(1))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, choice.unsqueeze(1), 0.0)


class RowStops(StoppingCriteria):
    """Marks a row finished once it reached its max_tokens or its new text contains one of its
    stop strings. Only saves compute: the exact cut is made afterwards from the ids.
    start: the sequence length when this generate call began; done: per row, tokens the row had
    generated before it (rows of one batch may have started at different chunks). interrupt:
    when it returns True every row stops after the current token (the chunk ends early so that
    newly queued requests can join the batch); the caller resumes the unfinished rows."""

    def __init__(
        self,
        tokenizer,
        start: int,
        rows: Sequence[SamplingParams],
        done: Sequence[int] | None = None,
        interrupt: Callable[[], bool] | None = None,
    ):
        self.tokenizer = tokenizer
        self.interrupt = interrupt
        self.start = start
        self.done = list(done) if done is not None else [0] * len(rows)
        self.stops = [[s for s in r.stop if s] for r in rows]
        self.max_tokens = [r.max_tokens for r in rows]
        # A character takes at most 4 byte-level tokens; decode a tail long enough to hold any
        # stop string that ends at the newest token.
        self.tail = [4 * max((len(s) for s in stops), default=0) + 2 for stops in self.stops]

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        length = input_ids.shape[1]
        if self.interrupt is not None and self.interrupt():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        finished = []
        for row, stops in enumerate(self.stops):
            n_new = self.done[row] + length - self.start
            stop = n_new >= self.max_tokens[row]
            if not stop and stops:
                first_new = length - n_new
                text = decode(
                    self.tokenizer, input_ids[row, max(first_new, length - self.tail[row]) :].tolist()
                )
                stop = any(s in text for s in stops)
            finished.append(stop)
        return torch.tensor(finished, dtype=torch.bool, device=input_ids.device)


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
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

    MIN_TOKENS = 64

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
            n = _common_prefix(r.prompt_ids, first, n)
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


class TransformersEngine:
    """Engine on a local transformers model (CPU or CUDA). See the module docstring.

    model_name_or_path: None -> embedded SmolLM2-135M-Instruct; a folder; or a hub id.
    device: "auto" -> CUDA if available. lora_path: adapter merged into the weights at load;
    requests naming another adapter fail (this engine serves one set of weights; use vllm for
    several adapters). tokenizer/model: pass already-loaded objects to skip loading (a passed-in
    model is used as is, in whatever train/eval mode it is; dropout makes outputs noisy).
    max_batch_size/batch_wait_ms: micro-batching limits (see module docstring).
    logprobs_mode: "processed" (default) or "raw" (see module docstring).
    prefix_cache: reuse the KV of prompt prefixes shared across calls (see PrefixCache); default
    on for a model the engine loaded, off for a passed-in one (its weights may change under us:
    whoever turns it on for one calls `reset_prefix_cache` after each weight change).
    chunk_tokens: generate a multi-row batch this many tokens at a time and drop finished rows in
    between (0: one generate call per batch).
    """

    name = "transformers"

    def __init__(
        self,
        model_name_or_path: str | None = None,
        device: str = "auto",
        dtype: Any = "auto",
        lora_path: str | None = None,
        max_batch_size: int = 32,
        batch_wait_ms: float = 5.0,
        tokenizer: Any = None,
        model: Any = None,
        logprobs_mode: LogprobsMode = "processed",
        prefix_cache: bool | None = None,
        chunk_tokens: int = 32,
    ):
        if logprobs_mode not in ("processed", "raw"):
            raise ValueError(f"logprobs_mode must be 'processed' or 'raw', got {logprobs_mode!r}")
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or model_name_or_path)
        self.tokenizer = tokenizer
        model_given = model is not None
        if model is None:
            model = load_model(
                model_name_or_path, dtype=dtype, device=resolve_device(device), lora_path=lora_path
            )
        # A model we loaded goes to eval mode; a passed-in one (e.g. the policy being trained)
        # is used as is: switching the trainer's model out of train mode is not ours to do.
        self.model = model if model_given else model.eval()
        # Remembered so load_lora can rebuild from the base weights.
        self._model_given = model_given
        self._base_model = model_name_or_path
        self._dtype = dtype
        self.device = next(self.model.parameters()).device
        # Batched CPU decoding of grouped-query models: avoid copying the KV cache per step
        # (identical outputs; see deep_math/engines/attention.py).
        if use_gqa_sdpa(self.model):
            log.info("CPU attention switched to %s (grouped-query SDPA without KV copies)", ATTENTION_NAME)
        self.lora_path = lora_path
        self.logprobs_mode: LogprobsMode = logprobs_mode

        self._eos_ids = self._collect_eos_ids()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self._eos_ids)
        self._pad_id: int = pad
        # Held while generating and while weights are replaced, so a weight update never lands
        # in the middle of a generate call.
        self._model_lock = threading.Lock()
        self.chunk_tokens = chunk_tokens
        # The shared prompt prefix (system prompt + few-shot examples) is prefilled once and its
        # KV reused by every batch. Off by default for a passed-in model: its weights change under
        # us (the trainer's policy), and a stale cache would be silently wrong.
        self._prefix = (
            PrefixCache(self.model)
            if (prefix_cache if prefix_cache is not None else not model_given)
            else None
        )
        self._batcher = MicroBatcher(
            self._run_batch,
            max_batch_size,
            batch_wait_ms / 1000.0,
            name=self.name,
            reject=self._reject_reason,
            joinable=True,
        )

    def _collect_eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        if not ids:
            raise ValueError("TransformersEngine needs an EOS token id (tokenizer or generation_config)")
        return frozenset(ids)

    # ---- public API -------------------------------------------------------------------------

    @property
    def stats(self) -> BatchStats:
        """Batches run, their sizes, tokens generated, seconds spent generating."""
        return self._batcher.stats

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Blocks until all `requests` are done; may share a batch with other threads' requests.
        Raises EngineError if any of them failed."""
        return self._batcher.submit(requests)

    def update_weights(self, named_tensors: dict[str, torch.Tensor]) -> None:
        """Copy new values into the model's parameters/buffers by name (weight sync from a
        trainer). Waits for a generate in flight to finish. Names may carry a "module." or peft
        "base_model.model." prefix. Raises KeyError for unknown names and ValueError for shape
        mismatches, before changing anything."""
        state = self.model.state_dict()
        resolved: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, tensor in named_tensors.items():
            key = name
            for prefix in ("module.", "base_model.model."):
                key = key.removeprefix(prefix)
            if key not in state:
                raise KeyError(f"update_weights: unknown parameter '{name}' (e.g. {list(state)[:3]})")
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"update_weights: '{name}' has shape {tuple(tensor.shape)}, model has {tuple(state[key].shape)}"
                )
            resolved.append((state[key], tensor))
        with self._model_lock, torch.no_grad():
            for target, tensor in resolved:
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
            if self._prefix is not None:
                self._prefix.clear()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prompt prefix (call after changing the model's weights in place
        by other means than `update_weights`, which clears it itself). Waits for a batch in flight."""
        with self._model_lock:
            if self._prefix is not None:
                self._prefix.clear()
        return True

    def load_lora(self, lora_path: str | None) -> None:
        """Serve `base model + adapter` (None: the plain base model) from now on.

        Reloads the base weights from disk and merges the adapter (so earlier `update_weights`
        calls are discarded), then swaps the model in between two batches. Only for engines that
        loaded their model themselves (not `model=`)."""
        if self._model_given:
            raise RuntimeError("load_lora needs an engine that loaded its own model (model= was passed)")
        model = load_model(self._base_model, dtype=self._dtype, device=str(self.device), lora_path=lora_path)
        use_gqa_sdpa(model)
        with self._model_lock:
            self.model = model
            self.lora_path = lora_path
            if self._prefix is not None:
                self._prefix = PrefixCache(model)

    def close(self) -> None:
        """Finish the batch in flight and stop the worker; queued requests fail. Idempotent."""
        self._batcher.close()

    def __enter__(self) -> TransformersEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- batches ----------------------------------------------------------------------------

    def _reject_reason(self, request: GenRequest) -> str | None:
        if not request.prompt_ids:
            return "empty prompt: GenRequest.prompt_ids must hold at least one token id"
        if request.lora_path and request.lora_path != self.lora_path:
            return (
                f"the transformers engine serves one set of weights (lora_path={self.lora_path!r}); "
                f"request asked for lora_path={request.lora_path!r}. Use engine=vllm for several adapters."
            )
        return None

    def _generators(self, rows: Sequence[SamplingParams]) -> list[torch.Generator | None]:
        generators: list[torch.Generator | None] = []
        for r in rows:
            if r.temperature == 0:
                generators.append(None)
                continue
            # On the CPU whatever the model's device: it draws one uniform per row per step
            # (`RowSampler._draw`), so a seeded row gets the same stream on CPU and GPU.
            g = torch.Generator()
            g.manual_seed(r.seed if r.seed is not None else secrets.randbits(63))
            generators.append(g)
        return generators

    def _pack(self, requests: list[GenRequest], prefix_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token matrix + attention mask. Without a shared prefix: left padding, so all prompts
        end at the same column. With one: [shared prefix | padding | own suffix]; the padding sits
        in the middle, position ids follow the mask (generate derives them from its cumsum)."""
        suffix_width = max(len(r.prompt_ids) - prefix_len for r in requests)
        width = prefix_len + suffix_width
        input_ids = torch.full((len(requests), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            suffix = r.prompt_ids[prefix_len:]
            input_ids[i, :prefix_len] = torch.tensor(r.prompt_ids[:prefix_len], dtype=torch.long)
            attention_mask[i, :prefix_len] = 1
            input_ids[i, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            attention_mask[i, width - len(suffix) :] = 1
        return input_ids, attention_mask

    def _generate_chunk(self, seq, mask, past, step, sampler, stops):
        return self.model.generate(
            input_ids=seq,
            attention_mask=mask,
            past_key_values=past,
            do_sample=False,
            max_new_tokens=step,
            logits_processor=[sampler],
            stopping_criteria=[stops],
            eos_token_id=sorted(self._eos_ids),
            pad_token_id=self._pad_id,
            return_dict_in_generate=True,
            # Neutralize sampling knobs a checkpoint's generation_config may carry.
            temperature=None,
            top_p=None,
            top_k=None,
        )

    def _join_rows(self, seq, mask, past, extra: list[GenRequest], prefix_len: int):
        """Prefill `extra` (prompts starting with the batch's shared prefix) and append them to
        the running batch: their own tokens are computed now except the last, which the next
        chunk feeds like every other row's newest token. Both sides get padding columns right
        after the prefix so all rows end at the same column."""
        ids, extra_mask = (t.to(self.device) for t in self._pack(extra, prefix_len))
        cache = SharedPrefixCache([(x.prefix_keys, x.prefix_values) for x in past.layers], len(extra))
        if ids.shape[1] - prefix_len > 1:
            block_mask = extra_mask[:, :-1]
            positions = (block_mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
            with shared_prefix.active(cache):
                self.model(
                    input_ids=ids[:, prefix_len:-1],
                    attention_mask=block_mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
        width = max(seq.shape[1], ids.shape[1])

        def widen(x: torch.Tensor, fill: int) -> torch.Tensor:
            pad = x.new_full((x.shape[0], width - x.shape[1]), fill)
            return torch.cat([x[:, :prefix_len], pad, x[:, prefix_len:]], dim=1)

        past.append_rows(cache)
        seq = torch.cat([widen(seq, self._pad_id), widen(ids, self._pad_id)])
        mask = torch.cat([widen(mask, 0), widen(extra_mask, 0)])
        return seq, mask

    def _run_batch(self, requests: list[GenRequest], join=None) -> list[GenResult]:
        """One batch, generated in chunks of `chunk_tokens`: after each chunk the rows that are
        done (stop string, EOS, max_tokens) leave the batch and their KV rows are dropped, so a
        batch whose rows finish at very different lengths stops paying for the finished ones.
        Each row keeps its own random generator across chunks, so chunking changes no sample.
        When the batch attends to one shared prefix (`SharedPrefixCache`), requests queued
        meanwhile whose prompts start with that prefix join it between chunks (`join`, from the
        micro-batcher); their results follow the batch's own."""
        requests = list(requests)
        rows = [r.sampling for r in requests]
        generators = self._generators(rows)
        new_ids: list[list[int]] = [[] for _ in requests]
        new_lps: list[list[float]] = [[] for _ in requests]
        with self._model_lock, torch.inference_mode():
            prefix_len = self._prefix.usable_length(requests) if self._prefix is not None else 0
            seq, mask = (t.to(self.device) for t in self._pack(requests, prefix_len))
            past = (
                self._prefix.expand(requests[0].prompt_ids[:prefix_len], len(requests))
                if prefix_len
                else None
            )
            shared = isinstance(past, SharedPrefixCache)
            joinable = shared and join is not None and self.chunk_tokens > 0
            prefix = requests[0].prompt_ids[:prefix_len]
            shares: dict[int, int] = {}  # id(request) -> prefix tokens it can share

            def accept(r: GenRequest) -> bool:
                """Join if the prompt shares >= MIN_TOKENS of the batch's prefix (the batch's
                prefix is shortened to what all rows share)."""
                n = _common_prefix(r.prompt_ids, prefix, len(r.prompt_ids) - 1)
                shares[id(r)] = n
                return n >= PrefixCache.MIN_TOKENS

            active = list(range(len(requests)))
            while active:
                act_rows = [rows[i] for i in active]
                budget = max(rows[i].max_tokens - len(new_ids[i]) for i in active)
                chunked = self.chunk_tokens > 0 and (len(active) > 1 or joinable)
                step = min(budget, self.chunk_tokens) if chunked else budget
                sampler = RowSampler(
                    act_rows, [generators[i] for i in active], self.device, self.logprobs_mode
                )
                start = seq.shape[1]
                room = joinable and len(active) < self._batcher.max_batch_size
                stops = RowStops(
                    self.tokenizer,
                    start,
                    act_rows,
                    [len(new_ids[i]) for i in active],
                    interrupt=self._batcher.has_queued if room else None,
                )
                with shared_prefix.active(past if shared else None):
                    out = self._generate_chunk(seq, mask, past, step, sampler, stops)
                chunk = out.sequences[:, start:]
                chunk_lps = torch.stack(sampler.logprobs, dim=1).tolist() if sampler.logprobs else []
                keep = []
                for j, i in enumerate(active):
                    new_ids[i] += chunk[j].tolist()
                    new_lps[i] += chunk_lps[j] if chunk_lps else []
                    cut = cut_generation(
                        self.tokenizer, new_ids[i], rows[i].stop, self._eos_ids, rows[i].max_tokens
                    )
                    if cut.finish_reason == "length" and len(new_ids[i]) < rows[i].max_tokens:
                        keep.append(j)
                if not keep:
                    break
                index = torch.tensor(keep, device=self.device)
                past = out.past_key_values
                past.batch_select_indices(index)
                seq = out.sequences[index]
                mask = torch.cat([mask, torch.ones_like(chunk)], dim=1)[index]
                active = [active[j] for j in keep]
                extra = join(self._batcher.max_batch_size - len(active), accept) if joinable else []
                if extra:
                    shortest = min(shares[id(r)] for r in extra)
                    if shortest < prefix_len:
                        past.shorten_prefix(shortest)
                        prefix_len, prefix = shortest, prefix[:shortest]
                    seq, mask = self._join_rows(seq, mask, past, extra, prefix_len)
                    first = len(requests)
                    requests += extra
                    rows += [r.sampling for r in extra]
                    generators += self._generators([r.sampling for r in extra])
                    new_ids += [[] for _ in extra]
                    new_lps += [[] for _ in extra]
                    active += range(first, len(requests))
        results = []
        for ids, lps, sampling in zip(new_ids, new_lps, rows, strict=True):
            cut = cut_generation(self.tokenizer, ids, sampling.stop, self._eos_ids, sampling.max_tokens)
            kept = ids[: cut.n_tokens]
            results.append(
                GenResult(
                    token_ids=kept,
                    logprobs=lps[: cut.n_tokens],
                    text=result_text(self.tokenizer, kept, cut.finish_reason),
                    finish_reason=cut.finish_reason,
                    stop_string=cut.stop_string,
                )
            )
        return results
