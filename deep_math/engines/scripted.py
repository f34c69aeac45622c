"""An engine that replays fixed completions, for deterministic tests of everything above engines.

It behaves like a real engine on the scripted text: the text is tokenized with the real tokenizer
and then cut exactly as a sampling engine would have stopped (stop strings at token granularity,
max_tokens, EOS), so the agent loop sees the same ids/finish reasons it would see from a model.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from deep_math.engines.base import GenRequest, GenResult
from deep_math.engines.stops import cut_generation, result_text


@dataclass
class ScriptedReply:
    """One scripted completion. eos=True: the model "samples" EOS after `text` (same as ending
    `text` with the tokenizer's EOS token string)."""

    text: str
    eos: bool = False


Script = Iterable[str | ScriptedReply] | Callable[[GenRequest, int], "str | ScriptedReply"]


def fake_logprob(index: int, token_id: int) -> float:
    """Deterministic, distinct, negative: -0.01 * (position + 1) - (token_id % 7) * 1e-4."""
    return -0.01 * (index + 1) - (token_id % 7) * 1e-4


class ScriptedEngine:
    """Replays `script` one completion per request.

    script: a sequence of texts (a queue: each request, in arrival order, takes the next one;
    running out raises IndexError) or a callable `(request, call_index) -> text` where
    call_index counts requests from 0 across all `generate` calls.
    A reply ends with EOS (finish "eos", the EOS id last) if it ends with the tokenizer's EOS
    string or is a `ScriptedReply(eos=True)`. A stop string in the text ends it earlier (finish
    "stop"); max_tokens cuts it (finish "length"). A reply that ends without EOS or a stop string
    is reported as finish "length" (as if the budget ran out exactly there).
    Logprobs are `fake_logprob(i, id)`. Every request is recorded in `.requests`, in order.
    Thread-safe: requests from concurrent callers are served one at a time under a lock.
    """

    name = "scripted"

    def __init__(self, tokenizer, script: Script):
        self.tokenizer = tokenizer
        self._callable = script if callable(script) else None
        self._queue: deque[str | ScriptedReply] = deque() if callable(script) else deque(script)
        self._lock = threading.Lock()
        self.requests: list[GenRequest] = []
        self.calls = 0  # number of generate() calls
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            raise ValueError("ScriptedEngine needs a tokenizer with an EOS token")
        self._eos_id: int = eos_id

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        with self._lock:
            self.calls += 1
            return [self._one(request) for request in requests]

    def _next_reply(self, request: GenRequest) -> ScriptedReply:
        index = len(self.requests)
        self.requests.append(request)
        if self._callable is not None:
            reply = self._callable(request, index)
        elif self._queue:
            reply = self._queue.popleft()
        else:
            raise IndexError(f"ScriptedEngine ran out of scripted replies at request {index}")
        return reply if isinstance(reply, ScriptedReply) else ScriptedReply(reply)

    def _tokenize(self, reply: ScriptedReply) -> list[int]:
        text, eos = reply.text, reply.eos
        eos_str = self.tokenizer.eos_token
        if eos_str and text.endswith(eos_str):
            text, eos = text[: -len(eos_str)], True
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        return ids + [self._eos_id] if eos else ids

    def _one(self, request: GenRequest) -> GenResult:
        ids = self._tokenize(self._next_reply(request))
        sampling = request.sampling
        cut = cut_generation(self.tokenizer, ids, sampling.stop, {self._eos_id}, sampling.max_tokens)
        kept = ids[: cut.n_tokens]
        return GenResult(
            token_ids=kept,
            logprobs=[fake_logprob(i, t) for i, t in enumerate(kept)],
            text=result_text(self.tokenizer, kept, cut.finish_reason),
            finish_reason=cut.finish_reason,
            stop_string=cut.stop_string,
        )

    def close(self) -> None:
        """Nothing to release."""
