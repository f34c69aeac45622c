"""The engine protocol: token ids in, token ids + logprobs out.

Every engine (transformers, vllm, server, scripted) implements `Engine.generate`, which takes a
batch of `GenRequest` and returns one `GenResult` per request, in order. Engines are thread-safe:
the agent runner calls `generate` from many threads at once (one per trace in flight) and an
engine may batch those calls together (the transformers engine micro-batches them).

Token ids are the source of truth. `GenResult.token_ids` are exactly the ids the model sampled
(including the tokens of a stop string when generation stopped on one, and the EOS token when it
stopped on EOS); `text` is their decoding, without the final EOS token (as vLLM reports it).
Nobody re-encodes `text` to get ids back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "eos", "length"]


@dataclass
class SamplingParams:
    """Sampling settings of one request.

    temperature: 0 means greedy. top_k: 0 or -1 disables. max_tokens: hard cap on new tokens.
    stop: strings that end generation; the stop string is kept in the output.
    seed: per-request seed (reproducible sampling where the engine supports it).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class GenRequest:
    prompt_ids: list[int]
    sampling: SamplingParams
    lora_path: str | None = None


@dataclass
class GenResult:
    """token_ids/logprobs: the new tokens only, one logprob per token (the sampled token's
    log-probability under the sampling distribution's logits, before temperature where the
    engine cannot say otherwise). finish_reason: "stop" (a stop string matched; it is the
    end of `text`), "eos" (an end-of-sequence token was sampled; it is the last id),
    "length" (max_tokens reached)."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: FinishReason
    stop_string: str | None = None

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"GenResult needs one logprob per token: {len(self.token_ids)} ids, {len(self.logprobs)} logprobs"
            )


class EngineError(RuntimeError):
    """An engine failed to produce a result (server down, CUDA error, bad request...)."""


@runtime_checkable
class Engine(Protocol):
    name: str
    tokenizer: object  # a transformers PreTrainedTokenizerBase

    def generate(self, requests: list[GenRequest]) -> list[GenResult]: ...

    def close(self) -> None: ...


# What an engine can do beyond generating, as the agent server asks it (isinstance checks).
@runtime_checkable
class WeightsUpdatable(Protocol):
    """Takes new weights as CPU tensors with HF names (the HTTP/file path)."""

    def update_weights(self, named_tensors: dict[str, Any]) -> None: ...


@runtime_checkable
class UpdateWindow(Protocol):
    """Weight updates in an explicit window: generation pauses from start until finish/abort."""

    def start_weight_update(self) -> None: ...

    def finish_weight_update(self) -> None: ...

    def abort_weight_update(self) -> None: ...


@runtime_checkable
class NCCLWeightReceiver(Protocol):
    """Receives weights over the trainer's NCCL group (TRL's protocol; vLLM on CUDA)."""

    def init_weight_transfer(self, init_info: dict[str, Any]) -> None: ...

    def update_weights_nccl(self, update_info: dict[str, Any]) -> None: ...


@runtime_checkable
class WeightsHashable(Protocol):
    """Says whether the served weights changed (a hash in the engine's own layout)."""

    def weights_hash(self) -> str: ...


@runtime_checkable
class PrefixCached(Protocol):
    """Caches KV of prompt prefixes; `reset_prefix_cache` drops it (KV computed with old weights)."""

    def reset_prefix_cache(self) -> Any: ...
