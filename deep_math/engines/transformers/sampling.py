"""Per-row sampling inside one greedy `generate` (the transformers engine's logits processor).

Sampling is done per row by our own logits processor (`RowSampler`) while `generate` itself runs
greedy: the processor applies each row's temperature, top-k and top-p, draws the row's token by
inverse CDF from one uniform of the row's own `torch.Generator` (`row_generators`), and hands
`generate` a score row whose argmax is that token. So requests with different sampling params share
one batch, and a request with a `seed` gets the same random stream whatever else is in its batch
(outputs match up to the float differences padding can cause). Temperature 0 rows take the argmax.

Logprobs ("processed" mode, the default): log_softmax of the scores the token was drawn from —
the model's logits after temperature scaling and top-k/top-p masking (renormalized over the
kept tokens) — at the sampled id. For greedy rows that is the raw model log-probability.
"raw" mode: log_softmax of the unprocessed logits (temperature 1), like vLLM's default.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Literal

import torch
from transformers import LogitsProcessor

from deep_math.engines.base import SamplingParams

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


def row_generators(rows: Sequence[SamplingParams]) -> list[torch.Generator | None]:
    """One random generator per row (None for greedy rows), seeded with the row's `seed` or
    at random."""
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
