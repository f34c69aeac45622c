"""Early per-row stopping inside one `generate` (the transformers engine's stopping criterion).

Stop strings and max_tokens are per row (`RowStops` stops a row early to save compute; finished
rows are padded by `generate`). The authoritative cut is done afterwards by
`deep_math.engines.stops.cut_generation` on the generated ids: first stop string at token
granularity (its last token kept), first EOS (kept), or max_tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria

from deep_math.engines.base import SamplingParams
from deep_math.engines.stops import decode


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
