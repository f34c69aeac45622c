"""Where a generation ends, at token granularity, shared by the engines that cut outputs themselves.

A stop string ends generation at the first token at which the decoded new text contains it; that
token is kept (so the stop string is the tail of `text`, possibly followed by the rest of that
token's characters). EOS ends generation at the EOS token, which is kept as the last id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deep_math.engines.base import FinishReason


def decode(tokenizer, ids: Sequence[int]) -> str:
    """Decode exactly (special tokens kept, no clean-up that would move spaces)."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def first_stop(tokenizer, ids: Sequence[int], stops: Sequence[str]) -> tuple[int, str] | None:
    """(n, stop): the smallest n such that decode(ids[:n]) contains a stop string, and that
    string (the one that occurs first in the text when several do); None if no stop occurs.

    Binary search over n: containment is monotone in n because the decoding of a prefix is a
    prefix of the decoding of a longer one (an incomplete UTF-8 sequence at the end decodes to
    U+FFFD, which no stop string contains). O(log n) decodes instead of one per token."""
    stops = [s for s in stops if s]
    if not stops or not ids:
        return None

    def found(n: int) -> str | None:
        text = decode(tokenizer, ids[:n])
        hits = [(text.find(s), s) for s in stops if s in text]
        return min(hits)[1] if hits else None

    if found(len(ids)) is None:
        return None
    lo, hi = 1, len(ids)  # found(hi) holds; find the smallest such n
    while lo < hi:
        mid = (lo + hi) // 2
        if found(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    stop = found(lo)
    return (lo, stop) if stop is not None else None


@dataclass
class Cut:
    """How many of the generated ids to keep and why generation ended there."""

    n_tokens: int
    finish_reason: FinishReason
    stop_string: str | None = None


def result_text(tokenizer, ids: Sequence[int], finish_reason: FinishReason) -> str:
    """The text of a result: the decoding of its ids, without the trailing EOS token when the
    generation ended on EOS (as vLLM reports it; the EOS id itself stays in `token_ids`)."""
    return decode(tokenizer, ids[:-1] if finish_reason == "eos" else ids)


def cut_generation(
    tokenizer,
    ids: Sequence[int],
    stops: Sequence[str],
    eos_ids: set[int] | frozenset[int],
    max_tokens: int,
) -> Cut:
    """Where the output `ids` ends: the earliest of the first EOS (kept), the first stop string
    (its last token kept) and `max_tokens`. If none occurs within `ids`, the output ran out
    without a natural end: finish "length" at len(ids) (callers that generated fewer than
    max_tokens ids for another reason must say so themselves)."""
    ids = list(ids[:max_tokens])
    eos_at = next((i for i, t in enumerate(ids) if t in eos_ids), None)
    # Only text before the EOS can contain a stop string that ends earlier than the EOS.
    stop = first_stop(tokenizer, ids[:eos_at] if eos_at is not None else ids, stops)
    if stop is not None:
        return Cut(stop[0], "stop", stop[1])
    if eos_at is not None:
        return Cut(eos_at + 1, "eos")
    return Cut(len(ids), "length")
