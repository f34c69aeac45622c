"""Offline vLLM engine (`vllm.LLM`) on the local GPU(s).

vLLM is imported in the constructor only, so this module imports on any machine.

Calls made (kept close to vLLM's public API so the CPU test's fake can check them exactly):
- `LLM(model=..., tensor_parallel_size=..., gpu_memory_utilization=..., seed=...,
  [data_parallel_size, max_model_len, enable_lora + max_lora_rank only when set], **llm_kwargs)`
- `llm.generate([TokensPrompt(prompt_token_ids=ids), ...], [SamplingParams(...), ...],
  lora_request=[LoRARequest | None, ...], use_tqdm=False)`
- `SamplingParams(n=1, temperature, top_p, top_k (-1 = off), max_tokens, stop,
  include_stop_str_in_output=True, logprobs=0, seed)`: logprobs=0 returns the sampled token's
  logprob only (vLLM's default logprobs mode: the raw model distribution, before temperature).

Concurrency: `LLM` is not thread-safe, so concurrent callers are micro-batched by one worker
thread (`MicroBatcher`) that hands vLLM a list; vLLM batches continuously inside one call, but a
request that arrives during a call waits for that call to end. (`AsyncLLM` would avoid that; not
done here.)

Token exactness on stop strings: `GenResult.token_ids` are vLLM's `CompletionOutput.token_ids`,
taken as is. With `include_stop_str_in_output=True` vLLM stops after the token that completes
the stop string and keeps that token, so the ids contain the stop string and `text` ends with it
(possibly followed by the rest of that token's characters, which vLLM trims from `text` but not
from the ids; we re-decode `text` from the ids so the two always agree). This is the behaviour
the GPU test `test_vllm_gpu_stop_string_tokens` checks; it is NOT verified on CPU.
"""

from __future__ import annotations

import logging
import threading
import zlib
from typing import Any

from deep_math.engines.base import EngineError, FinishReason, GenRequest, GenResult
from deep_math.engines.batching import BatchStats, MicroBatcher
from deep_math.engines.stops import decode
from deep_math.models import load_tokenizer, resolve_model_path

log = logging.getLogger(__name__)

VLLM_INSTALL_HINT = "vLLM is needed for engine=vllm: pip install -e '.[gpu]'"


def map_finish_reason(finish_reason: str | None, stop_reason: int | str | None) -> FinishReason:
    """vLLM's (finish_reason, stop_reason) -> ours. "stop" with a string stop_reason is a stop
    string; "stop" with None (EOS) or an int (a stop token id) is an end-of-sequence token."""
    if finish_reason == "length":
        return "length"
    if finish_reason == "stop":
        return "stop" if isinstance(stop_reason, str) else "eos"
    raise EngineError(
        f"vLLM returned an unexpected finish_reason {finish_reason!r} (stop_reason {stop_reason!r})"
    )


def sampled_logprobs(token_ids: list[int], logprobs: list[dict[int, Any]] | None) -> list[float]:
    """One float per sampled token from vLLM's per-position {token_id: Logprob} dicts."""
    if logprobs is None:
        raise EngineError("vLLM returned no logprobs although logprobs=0 was requested")
    if len(logprobs) != len(token_ids):
        raise EngineError(f"vLLM returned {len(logprobs)} logprob entries for {len(token_ids)} tokens")
    out = []
    for token_id, entry in zip(token_ids, logprobs, strict=True):
        if token_id not in entry:
            raise EngineError(f"vLLM logprobs lack the sampled token {token_id}")
        out.append(float(entry[token_id].logprob))
    return out


class VLLMEngine:
    """Engine on `vllm.LLM`. See the module docstring for the exact calls and limits.

    model_name_or_path: None -> the embedded SmolLM2 copy; a folder; or a hub id.
    lora_path: default adapter for requests that name none (GenRequest.lora_path overrides it).
    enable_lora: defaults to True when lora_path is given; pass True to serve per-request
    adapters without a default one. Each distinct adapter path gets a stable integer id.
    seed: the engine seed (vLLM's `LLM(seed=...)`); requests with `SamplingParams.seed` are
    reproducible on their own.
    llm_kwargs: passed to `vllm.LLM` unchanged (e.g. enforce_eager, dtype, max_num_seqs).
    """

    name = "vllm"

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        lora_path: str | None = None,
        max_model_len: int | None = None,
        seed: int = 0,
        enable_lora: bool | None = None,
        max_lora_rank: int = 32,
        tokenizer: Any = None,
        max_batch_size: int = 4096,
        batch_wait_ms: float = 5.0,
        **llm_kwargs: Any,
    ):
        try:
            import vllm
            from vllm.inputs import TokensPrompt
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise ImportError(VLLM_INSTALL_HINT) from exc
        self._vllm_sampling_params = vllm.SamplingParams
        self._tokens_prompt = TokensPrompt
        self._lora_request = LoRARequest
        model_path = resolve_model_path(model_name_or_path)
        self.lora_path = lora_path
        self.enable_lora = bool(lora_path) if enable_lora is None else enable_lora
        lora_kwargs = {"enable_lora": True, "max_lora_rank": max_lora_rank} if self.enable_lora else {}
        if max_model_len is not None:
            llm_kwargs["max_model_len"] = max_model_len
        if data_parallel_size != 1:  # only passed when used: older LLM signatures lack it
            llm_kwargs["data_parallel_size"] = data_parallel_size
        self.llm = vllm.LLM(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            **lora_kwargs,
            **llm_kwargs,
        )
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or model_path)
        self.tokenizer = tokenizer
        self._lora_ids: dict[str, int] = {}
        self._lora_lock = threading.Lock()
        self._batcher = MicroBatcher(
            self._run_batch,
            max_batch_size,
            batch_wait_ms / 1000.0,
            name=self.name,
            reject=self._reject_reason,
        )

    @property
    def stats(self) -> BatchStats:
        return self._batcher.stats

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Blocks until all `requests` are done (batched with other threads' requests)."""
        return self._batcher.submit(requests)

    def close(self) -> None:
        """Stop the worker thread. The `LLM` itself is released when this object is collected."""
        self._batcher.close()

    def _reject_reason(self, request: GenRequest) -> str | None:
        if not request.prompt_ids:
            return "empty prompt: GenRequest.prompt_ids must hold at least one token id"
        if (request.lora_path or self.lora_path) and not self.enable_lora:
            return f"request asks for LoRA adapter {request.lora_path!r} but the engine has enable_lora=False"
        return None

    def lora_request(self, path: str | None) -> Any:
        """The `LoRARequest` for an adapter folder (None -> no adapter). Ids are stable per path
        (vLLM caches adapters by id) and derived from the path so logs are comparable."""
        if not path:
            return None
        with self._lora_lock:
            if path not in self._lora_ids:
                lora_id = zlib.crc32(path.encode()) % 1_000_000 + 1
                while lora_id in self._lora_ids.values():
                    lora_id += 1
                self._lora_ids[path] = lora_id
            return self._lora_request(f"adapter-{self._lora_ids[path]}", self._lora_ids[path], path)

    def sampling_params(self, request: GenRequest) -> Any:
        s = request.sampling
        return self._vllm_sampling_params(
            n=1,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else -1,
            max_tokens=s.max_tokens,
            stop=list(s.stop),
            include_stop_str_in_output=True,
            logprobs=0,
            seed=s.seed,
        )

    def _run_batch(self, requests: list[GenRequest]) -> list[GenResult]:
        prompts = [self._tokens_prompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        params = [self.sampling_params(r) for r in requests]
        loras = [self.lora_request(r.lora_path or self.lora_path) for r in requests]
        kwargs: dict[str, Any] = {"use_tqdm": False}
        if any(lora is not None for lora in loras):
            kwargs["lora_request"] = loras
        outputs = self.llm.generate(prompts, params, **kwargs)
        if len(outputs) != len(requests):
            raise EngineError(f"vLLM returned {len(outputs)} outputs for {len(requests)} prompts")
        return [self._to_result(output.outputs[0]) for output in outputs]

    def _to_result(self, completion: Any) -> GenResult:
        token_ids = list(completion.token_ids)
        finish = map_finish_reason(completion.finish_reason, completion.stop_reason)
        stop_string = completion.stop_reason if finish == "stop" else None
        # Ids are the truth; text is re-decoded from them, without a trailing EOS / stop token id
        # (vLLM keeps that id in token_ids but not in text).
        end_ids = {self.tokenizer.eos_token_id, completion.stop_reason}
        ends_on_eos = finish == "eos" and bool(token_ids) and token_ids[-1] in end_ids
        ids_for_text = token_ids[:-1] if ends_on_eos else token_ids
        text = decode(self.tokenizer, ids_for_text)
        if stop_string and stop_string not in text:
            log.warning(
                "vLLM stopped on %r but the returned ids decode to %r: ids kept as returned",
                stop_string,
                text[-80:],
            )
        return GenResult(
            token_ids=token_ids,
            logprobs=sampled_logprobs(token_ids, completion.logprobs),
            text=text,
            finish_reason=finish,
            stop_string=stop_string,
        )
