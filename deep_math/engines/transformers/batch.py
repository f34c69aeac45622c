"""One batch of the transformers engine: greedy `generate` in chunks over per-row sampling.

A batch runs in chunks of the engine's `chunk_tokens`: after each chunk the rows that are done
(stop string, EOS, max_tokens) leave the batch and their KV rows are dropped, so a batch whose
rows finish at very different lengths stops paying for the finished ones. Each row keeps its own
random generator across chunks, so chunking changes no sample. When the batch attends to one
shared prefix (`SharedPrefixCache`), requests queued meanwhile whose prompts start with that
prefix join it between chunks (`join`, from the micro-batcher); their results follow the batch's
own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from deep_math.engines.base import GenRequest, GenResult, SamplingParams
from deep_math.engines.stops import Cut, cut_generation, result_text
from deep_math.engines.transformers import shared_prefix
from deep_math.engines.transformers.prefix_cache import PrefixCache, common_prefix
from deep_math.engines.transformers.sampling import RowSampler, row_generators
from deep_math.engines.transformers.shared_prefix import SharedPrefixCache
from deep_math.engines.transformers.stopping import RowStops

if TYPE_CHECKING:
    from deep_math.engines.transformers.engine import TransformersEngine

# The micro-batcher's join callback: join(limit, accept) -> queued requests admitted to the batch.
Join = Callable[[int, Callable[[GenRequest], bool]], list[GenRequest]]


@dataclass
class Row:
    """One request of a running batch: its random stream and what it generated so far."""

    request: GenRequest
    generator: torch.Generator | None
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    @property
    def sampling(self) -> SamplingParams:
        return self.request.sampling

    def cut(self, tokenizer: Any, eos_ids: frozenset[int]) -> Cut:
        return cut_generation(tokenizer, self.ids, self.sampling.stop, eos_ids, self.sampling.max_tokens)

    def unfinished(self, tokenizer: Any, eos_ids: frozenset[int]) -> bool:
        """No stop string, EOS or max_tokens reached yet."""
        cut = self.cut(tokenizer, eos_ids)
        return cut.finish_reason == "length" and len(self.ids) < self.sampling.max_tokens

    def result(self, tokenizer: Any, eos_ids: frozenset[int]) -> GenResult:
        cut = self.cut(tokenizer, eos_ids)
        kept = self.ids[: cut.n_tokens]
        return GenResult(
            token_ids=kept,
            logprobs=self.logprobs[: cut.n_tokens],
            text=result_text(tokenizer, kept, cut.finish_reason),
            finish_reason=cut.finish_reason,
            stop_string=cut.stop_string,
        )


def new_rows(requests: list[GenRequest]) -> list[Row]:
    generators = row_generators([r.sampling for r in requests])
    return [Row(r, g) for r, g in zip(requests, generators, strict=True)]


def pack(requests: list[GenRequest], prefix_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token matrix + attention mask. Without a shared prefix: left padding, so all prompts
    end at the same column. With one: [shared prefix | padding | own suffix]; the padding sits
    in the middle, position ids follow the mask (generate derives them from its cumsum)."""
    suffix_width = max(len(r.prompt_ids) - prefix_len for r in requests)
    width = prefix_len + suffix_width
    input_ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(requests), width), dtype=torch.long)
    for i, r in enumerate(requests):
        suffix = r.prompt_ids[prefix_len:]
        input_ids[i, :prefix_len] = torch.tensor(r.prompt_ids[:prefix_len], dtype=torch.long)
        attention_mask[i, :prefix_len] = 1
        input_ids[i, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
        attention_mask[i, width - len(suffix) :] = 1
    return input_ids, attention_mask


def generate_chunk(engine: TransformersEngine, seq, mask, past, step, sampler, stops):
    return engine.model.generate(
        input_ids=seq,
        attention_mask=mask,
        past_key_values=past,
        do_sample=False,
        max_new_tokens=step,
        logits_processor=[sampler],
        stopping_criteria=[stops],
        eos_token_id=sorted(engine._eos_ids),
        pad_token_id=engine._pad_id,
        return_dict_in_generate=True,
        # Neutralize sampling knobs a checkpoint's generation_config may carry.
        temperature=None,
        top_p=None,
        top_k=None,
    )


def join_rows(engine: TransformersEngine, seq, mask, past, extra: list[GenRequest], prefix_len: int):
    """Prefill `extra` (prompts starting with the batch's shared prefix) and append them to
    the running batch: their own tokens are computed now except the last, which the next
    chunk feeds like every other row's newest token. Both sides get padding columns right
    after the prefix so all rows end at the same column."""
    pad_id = engine._pad_id
    ids, extra_mask = (t.to(engine.device) for t in pack(extra, prefix_len, pad_id))
    cache = SharedPrefixCache([(x.prefix_keys, x.prefix_values) for x in past.layers], len(extra))
    if ids.shape[1] - prefix_len > 1:
        block_mask = extra_mask[:, :-1]
        positions = (block_mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
        with shared_prefix.active(cache):
            engine.model(
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
    seq = torch.cat([widen(seq, pad_id), widen(ids, pad_id)])
    mask = torch.cat([widen(mask, 0), widen(extra_mask, 0)])
    return seq, mask


def run_batch(
    engine: TransformersEngine, requests: list[GenRequest], join: Join | None = None
) -> list[GenResult]:
    """Generate `requests` as one batch (see the module docstring) with the engine's current
    model, prefix cache and settings; results in request order, then joined requests'."""
    tokenizer, eos_ids, batcher = engine.tokenizer, engine._eos_ids, engine._batcher
    rows = new_rows(requests)
    with engine._model_lock, torch.inference_mode():
        prefix_len = engine._prefix.usable_length(requests) if engine._prefix is not None else 0
        seq, mask = (t.to(engine.device) for t in pack(requests, prefix_len, engine._pad_id))
        past = (
            engine._prefix.expand(requests[0].prompt_ids[:prefix_len], len(requests)) if prefix_len else None
        )
        shared = isinstance(past, SharedPrefixCache)
        joinable = shared and join is not None and engine.chunk_tokens > 0
        prefix = requests[0].prompt_ids[:prefix_len]
        shares: dict[int, int] = {}  # id(request) -> prefix tokens it can share

        def accept(r: GenRequest) -> bool:
            """Join if the prompt shares >= MIN_TOKENS of the batch's prefix (the batch's
            prefix is shortened to what all rows share)."""
            n = common_prefix(r.prompt_ids, prefix, len(r.prompt_ids) - 1)
            shares[id(r)] = n
            return n >= PrefixCache.MIN_TOKENS

        active = list(rows)
        while active:
            sampling = [row.sampling for row in active]
            budget = max(row.sampling.max_tokens - len(row.ids) for row in active)
            chunked = engine.chunk_tokens > 0 and (len(active) > 1 or joinable)
            step = min(budget, engine.chunk_tokens) if chunked else budget
            sampler = RowSampler(
                sampling, [row.generator for row in active], engine.device, engine.logprobs_mode
            )
            start = seq.shape[1]
            room = joinable and len(active) < batcher.max_batch_size
            stops = RowStops(
                tokenizer,
                start,
                sampling,
                [len(row.ids) for row in active],
                interrupt=batcher.has_queued if room else None,
            )
            with shared_prefix.active(past if shared else None):
                out = generate_chunk(engine, seq, mask, past, step, sampler, stops)
            chunk = out.sequences[:, start:]
            chunk_lps = torch.stack(sampler.logprobs, dim=1).tolist() if sampler.logprobs else []
            keep = []
            for j, row in enumerate(active):
                row.ids += chunk[j].tolist()
                row.logprobs += chunk_lps[j] if chunk_lps else []
                if row.unfinished(tokenizer, eos_ids):
                    keep.append(j)
            if not keep:
                break
            index = torch.tensor(keep, device=engine.device)
            past = out.past_key_values
            past.batch_select_indices(index)
            seq = out.sequences[index]
            mask = torch.cat([mask, torch.ones_like(chunk)], dim=1)[index]
            active = [active[j] for j in keep]
            extra = join(batcher.max_batch_size - len(active), accept) if joinable else []
            if extra:
                shortest = min(shares[id(r)] for r in extra)
                if shortest < prefix_len:
                    past.shorten_prefix(shortest)
                    prefix_len, prefix = shortest, prefix[:shortest]
                seq, mask = join_rows(engine, seq, mask, past, extra, prefix_len)
                joined = new_rows(extra)
                rows += joined
                active += joined
    return [row.result(tokenizer, eos_ids) for row in rows]
