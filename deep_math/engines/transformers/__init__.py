"""The default engine: Hugging Face transformers `generate`, micro-batched across threads.

How a batch is generated
- Callers from many threads call `generate`; their requests go into one queue. A single worker
  thread waits up to `batch_wait_ms` after the first request for more, takes at most
  `max_batch_size`, runs ONE batch over all of them (left padding) and resolves each caller's
  futures. Errors become `EngineError` on every affected request, never fake text.
- Sampling is done per row by our own logits processor while `generate` itself runs greedy, so
  requests with different sampling params share one batch and a seeded request gets the same
  random stream whatever else is in its batch (sampling.py, which also defines the logprobs).
- Shared prompt prefixes (system prompt + few-shot examples) are prefilled once (prefix_cache.py);
  on CPU a batch then attends to ONE copy of the prefix (shared_prefix.py: cascade attention, run
  by the attention registered in attention.py) instead of a copy per row. Batches run in chunks
  and finished rows leave; queued requests sharing the prefix join between chunks (batch.py).
- Stop strings and max_tokens are per row too (stopping.py stops a row early to save compute); the
  authoritative cut is `deep_math.engines.stops.cut_generation` on the generated ids.

Modules: engine.py (`TransformersEngine`: model loading, LoRA merge, weight updates, public API),
batch.py (one batch), sampling.py, stopping.py, prefix_cache.py, shared_prefix.py, attention.py.
"""

from deep_math.engines.transformers.engine import TransformersEngine
from deep_math.engines.transformers.prefix_cache import PrefixCache
from deep_math.engines.transformers.sampling import LogprobsMode, RowSampler
from deep_math.engines.transformers.stopping import RowStops

__all__ = ["LogprobsMode", "PrefixCache", "RowSampler", "RowStops", "TransformersEngine"]
