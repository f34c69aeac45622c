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

Weight updates (the hooks `deep_math.vllm_serve_agent` forwards to). Checked only against the fake
`vllm` module in tests/test_engines_vllm.py; NOT run on a GPU or against a real vLLM. They mirror
what `vllm serve` (VLLM_SERVER_DEV_MODE=1, as TRL 1.16's `trl vllm-serve` starts it) does behind its
RLHF routes (`vllm/entrypoints/serve/dev/rlhf/api_router.py`, earlier
`vllm/entrypoints/serve/rlhf/api_router.py`): each route calls the same-named `EngineClient`
(`AsyncLLM`) method, which runs `collective_rpc(<same name>, ...)` on every worker. The offline
`LLM` has the same four methods (`vllm/entrypoints/llm.py`; in the newest source they live in
`RLOfflineMixin`, `vllm/entrypoints/rl/offline.py`), and we call those:
- POST /init_weight_transfer_engine {"init_info"} -> `init_weight_transfer(init_info)` ->
  `llm.init_weight_transfer_engine({"init_info": init_info})` -> collective_rpc
  "init_weight_transfer_engine" kwargs {"init_info"}; the worker parses it into the backend's init
  info (NCCL: master_address, master_port, rank_offset, world_size [, packed]) and joins the trainer's
  NCCL group (blocks until the trainer joins the rendezvous).
- POST /start_weight_update -> `start_weight_update()` -> `llm.start_weight_update()` ->
  collective_rpc "start_weight_update" (the worker's transfer engine opens a layerwise reload of
  the model). Called with no argument: works both where it takes `is_checkpoint_format=True` by
  default (vLLM 0.21-era) and where it takes none (newest source).
- POST /update_weights {"update_info"} -> `update_weights_nccl(update_info)` ->
  `llm.update_weights({"update_info": update_info})` -> collective_rpc "update_weights" kwargs
  {"update_info"} (NCCL: names, dtype_names, shapes [, packed]); the workers receive the broadcast
  and load it through the model's `load_weights`.
- POST /finish_weight_update -> `finish_weight_update()` -> `llm.finish_weight_update()` ->
  collective_rpc "finish_weight_update" (finalizes the layerwise reload), then
  `llm.reset_prefix_cache()` so no KV computed with the old weights is reused.
These need `LLM(weight_transfer_config=WeightTransferConfig(backend=...))` (otherwise vLLM's workers
raise "Weight transfer not configured"), so the engine passes it (`weight_transfer_backend`, default
"nccl"; None leaves it out).

The CPU/HTTP path, `update_weights(named_tensors)`: vLLM has no call that takes tensors from the
caller, so a worker extension of ours (`DeepMathWorkerExtension`, passed as
`LLM(worker_extension_cls=...)`) takes safetensors bytes over `llm.collective_rpc` (bytes pass
vLLM's msgpack IPC as is; about 1 GiB per call) and feeds them to the worker model's
`load_weights` (HF checkpoint names; vLLM fuses and shards them), inside the same
start/finish window. `weights_hash()` asks the same extension for a sha256 over the worker model's
parameters: vLLM's fused, per-rank layout, so it tells whether the served weights changed but is
NOT comparable with `state_dict_hash` of the trainer's model.

Locking: one `_model_lock` is held by each `llm.generate` batch and by every weight-update call, so
an update waits for the batch in flight and `LLM` is never called from two threads at once. It
stays held from `start_weight_update` to `finish_weight_update` / `abort_weight_update` (the model
is mid-reload in between), so a client that dies in between blocks generation until POST
/abort_weight_update.

Data parallel: `data_parallel_size` is passed to `LLM` as is; recent vLLM refuses
`LLM(data_parallel_size>1)` in one process unless `distributed_executor_backend="external_launcher"`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import zlib
from collections.abc import Iterator
from typing import Any

from deep_math.engines.base import EngineError, FinishReason, GenRequest, GenResult
from deep_math.engines.batching import BatchStats, MicroBatcher
from deep_math.engines.stops import decode
from deep_math.models import load_tokenizer, resolve_model_path

log = logging.getLogger(__name__)

VLLM_INSTALL_HINT = "vLLM is needed for engine=vllm: pip install -e '.[gpu]'"
WORKER_EXTENSION = "deep_math.engines.vllm_engine.DeepMathWorkerExtension"
HTTP_CHUNK_BYTES = 1 << 30  # safetensors bytes per collective_rpc call (msgpack bin limit: 4 GiB)
NAME_PREFIXES = ("module.", "base_model.model.")


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


class DeepMathWorkerExtension:
    """Mixed into every vLLM worker by `LLM(worker_extension_cls=WORKER_EXTENSION)`; its methods
    run on each worker through `llm.collective_rpc(name, kwargs=...)`. `self.model_runner.model` is
    the worker's model (vLLM's GPU worker). Not run on a GPU here."""

    def deep_math_load_safetensors(self, payload: bytes) -> int:
        """Load one safetensors payload (HF checkpoint names) with the model's `load_weights`."""
        from safetensors.torch import load

        tensors = load(payload)
        self.model_runner.model.load_weights(weights=list(tensors.items()))  # type: ignore[attr-defined]
        return len(tensors)

    def deep_math_weights_hash(self) -> str:
        """sha256 over this worker's parameters (names and bytes, sorted by name)."""
        import torch

        digest = hashlib.sha256()
        params = self.model_runner.model.named_parameters()  # type: ignore[attr-defined]
        for name, tensor in sorted(params, key=lambda item: item[0]):
            digest.update(name.encode())
            flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            digest.update(flat.numpy().tobytes())
        return digest.hexdigest()


def safetensors_chunks(named_tensors: dict[str, Any], chunk_bytes: int = HTTP_CHUNK_BYTES) -> Iterator[bytes]:
    """`named_tensors` as safetensors payloads of about `chunk_bytes` each, names without a
    "module." / peft "base_model.model." prefix."""
    from safetensors.torch import save

    chunk: dict[str, Any] = {}
    size = 0
    for name, tensor in named_tensors.items():
        key = name
        for prefix in NAME_PREFIXES:
            key = key.removeprefix(prefix)
        cpu = tensor.detach().to("cpu").contiguous()
        chunk[key] = cpu
        size += cpu.numel() * cpu.element_size()
        if size >= chunk_bytes:
            yield save(chunk)
            chunk, size = {}, 0
    if chunk:
        yield save(chunk)


class VLLMEngine:
    """Engine on `vllm.LLM`. See the module docstring for the exact calls and limits.

    model_name_or_path: None -> the embedded SmolLM2 copy; a folder; or a hub id.
    lora_path: default adapter for requests that name none (GenRequest.lora_path overrides it).
    enable_lora: defaults to True when lora_path is given; pass True to serve per-request
    adapters without a default one. Each distinct adapter path gets a stable integer id.
    seed: the engine seed (vLLM's `LLM(seed=...)`); requests with `SamplingParams.seed` are
    reproducible on their own.
    weight_transfer_backend: `LLM(weight_transfer_config=WeightTransferConfig(backend=...))`, needed
    by the weight-update hooks ("nccl" for TRL's trainer; None: not passed, hooks then fail in vLLM).
    llm_kwargs: passed to `vllm.LLM` unchanged (e.g. enforce_eager, dtype, max_num_seqs); a
    `weight_transfer_config` or `worker_extension_cls` there replaces ours (HTTP updates and
    `weights_hash` need `DeepMathWorkerExtension`'s methods on the workers).
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
        weight_transfer_backend: str | None = "nccl",
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
        if weight_transfer_backend is not None and "weight_transfer_config" not in llm_kwargs:
            from vllm.config import WeightTransferConfig

            llm_kwargs["weight_transfer_config"] = WeightTransferConfig(backend=weight_transfer_backend)
        llm_kwargs.setdefault("worker_extension_cls", WORKER_EXTENSION)
        self.world_size = tensor_parallel_size * data_parallel_size  # vLLM workers (TP x DP)
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
        # Held by each generate batch and by weight updates (from start to finish); see module doc.
        self._model_lock = threading.Lock()
        self._update_open = False
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
        """Stop the worker thread (an open weight update is aborted first). The `LLM` itself is
        released when this object is collected."""
        self.abort_weight_update()
        self._batcher.close()

    # --- weight updates (see the module docstring for the vLLM calls behind each) ------------
    def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        """Join the trainer's weight-transfer group (blocks in the NCCL rendezvous)."""
        with self._exclusive("init_weight_transfer"):
            self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        """Open a weight update: waits for the batch in flight, then holds the model lock until
        `finish_weight_update` / `abort_weight_update`."""
        if self._update_open:
            raise RuntimeError(
                "a weight update is already open: POST /finish_weight_update or /abort_weight_update first"
            )
        self._model_lock.acquire()
        try:
            self.llm.start_weight_update()
        except BaseException:
            self._model_lock.release()
            raise
        self._update_open = True

    def update_weights_nccl(self, update_info: dict[str, Any]) -> None:
        """Receive one NCCL broadcast described by `update_info` (inside an open update)."""
        self._require_open("update_weights_nccl")
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self) -> None:
        """Close the open update and release the model lock (also when vLLM's finish fails)."""
        self._require_open("finish_weight_update")
        try:
            self.llm.finish_weight_update()
            self.llm.reset_prefix_cache()
        finally:
            self._close_update()

    def abort_weight_update(self) -> None:
        """Close an open update without more weights; no-op when none is open. vLLM has no abort,
        so this runs its finish (the weights loaded so far stay) and releases the model lock."""
        if not self._update_open:
            return
        try:
            self.llm.finish_weight_update()
            self.llm.reset_prefix_cache()
        except Exception:  # noqa: BLE001 - aborting must always release the lock
            log.exception("vLLM finish_weight_update failed while aborting a weight update")
        finally:
            self._close_update()
        log.warning("vLLM weight update aborted: the served weights may be partly updated")

    def update_weights(self, named_tensors: dict[str, Any]) -> None:
        """Load CPU tensors by HF name into the served model (the HTTP path). Inside an open
        update (the server's /finish_weight_update) they load into it, and a failure aborts it;
        otherwise this runs a whole start / load / finish update itself."""
        if not self._update_open:
            self.start_weight_update()
            self.update_weights(named_tensors)
            self.finish_weight_update()
            return
        try:
            for payload in safetensors_chunks(named_tensors):
                self.llm.collective_rpc("deep_math_load_safetensors", kwargs={"payload": payload})
        except BaseException:
            self.abort_weight_update()
            raise

    def weights_hash(self) -> str:
        """sha256 of the workers' parameter hashes (vLLM's layout; see the module docstring)."""
        with self._exclusive("weights_hash"):
            hashes = self.llm.collective_rpc("deep_math_weights_hash")
        if len(hashes) == 1:
            return hashes[0]
        return hashlib.sha256("".join(hashes).encode()).hexdigest()

    def _exclusive(self, what: str) -> threading.Lock:
        if self._update_open:
            raise RuntimeError(f"{what} is not allowed while a weight update is open")
        return self._model_lock

    def _require_open(self, what: str) -> None:
        if not self._update_open:
            raise RuntimeError(f"{what}: no weight update is open; POST /start_weight_update first")

    def _close_update(self) -> None:
        self._update_open = False
        self._model_lock.release()

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
        with self._model_lock:
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
