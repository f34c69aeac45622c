"""`AgentService`: the server's state and behaviour behind the HTTP routes (engine, agent runner,
weight updates), usable in-process by tests and benchmarks."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from deep_math.engines.base import (
    GenRequest,
    NCCLWeightReceiver,
    PrefixCached,
    SamplingParams,
    UpdateWindow,
    WeightsHashable,
    WeightsUpdatable,
)
from deep_math.engines.weights import state_dict_hash
from deep_math.seeds import derive_seed
from deep_math.serving.config import PROTOCOL_VERSION, ServerConfig

log = logging.getLogger(__name__)


class HTTPError(Exception):
    """An error answered with `status` and `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def build_server_engine(cfg: ServerConfig) -> Any:
    """The engine `cfg` names, given the server settings its constructor takes; vLLM also gets its
    own settings that are set (some, e.g. enable_prefix_caching, go on to vLLM unnamed), and
    --engine_kwargs override all of them."""
    from deep_math import engines

    engines.check_engine_options(cfg.engine, cfg.engine_kwargs)
    shared = {
        "model_name_or_path": cfg.model,
        "device": cfg.device,
        "dtype": cfg.dtype,
        "max_batch_size": cfg.max_batch_size,
        "batch_wait_ms": cfg.batch_wait_ms,
    }
    vllm_only = cfg.vllm_settings() if cfg.engine == "vllm" else {}
    kwargs = {**engines.engine_kwargs(cfg.engine, shared), **vllm_only, **cfg.engine_kwargs}
    return engines.build_engine(cfg.engine, **kwargs)


def sampling_from_json(data: dict[str, Any]) -> SamplingParams:
    known = {f.name for f in fields(SamplingParams)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise HTTPError(400, f"unknown sampling keys {unknown}; valid: {sorted(known)}")
    try:
        return SamplingParams(**data)
    except (TypeError, ValueError) as exc:
        raise HTTPError(400, f"bad sampling params: {exc}") from exc


def _token_id_prompts(prompt: Any) -> list[list[int]]:
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) and p for p in prompt):
        if all(isinstance(t, int) for p in prompt for t in p):
            return prompt
    raise HTTPError(
        400, "prompt must be token ids (a list of ints, or a list of such lists); text prompts are not served"
    )


# /v1/completions keys honoured as vLLM does, and keys accepted only at their neutral value.
COMPLETION_KEYS = frozenset(
    {"model", "prompt", "n", "temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "logprobs",
     "lora_path", "return_token_ids", "return_tokens_as_token_ids", "output_kind"}
)  # fmt: skip
NEUTRAL_COMPLETION_KEYS = {
    "repetition_penalty": 1.0, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "stream": False,
    "include_stop_str_in_output": True,  # what every engine here does
}  # fmt: skip


def _check_completion_keys(body: dict[str, Any]) -> None:
    unsupported = sorted(
        f"{key}={value!r}"
        for key, value in body.items()
        if key not in COMPLETION_KEYS and NEUTRAL_COMPLETION_KEYS.get(key, object()) != value
    )
    if unsupported:
        raise HTTPError(
            400,
            f"/v1/completions does not honour {', '.join(unsupported)}; supported: {sorted(COMPLETION_KEYS)} "
            f"(and {sorted(NEUTRAL_COMPLETION_KEYS)} at their neutral values {NEUTRAL_COMPLETION_KEYS})",
        )


class AgentService:
    """The server's state: engine, agent runner (with its sandbox) and weight updates."""

    def __init__(self, cfg: ServerConfig, engine: Any = None, sandbox: Any = None):
        from deep_math.agent.runner import AgentRunner

        self.cfg = cfg
        self.engine = engine if engine is not None else build_server_engine(cfg)
        self.runner = AgentRunner(self.engine, cfg.agent, sandbox=sandbox)
        self.version = 0
        self._staged: dict[str, Any] | None = None
        self._update_lock = threading.Lock()

    # --- reads ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        agent = asdict(self.cfg.agent)
        return {
            "protocol": PROTOCOL_VERSION,
            "model": self.model_id,
            "engine": self.cfg.engine,
            "tensor_parallel_size": self.cfg.tensor_parallel_size,
            "data_parallel_size": self.cfg.data_parallel_size,
            "weights_version": self.version,
            **agent,
        }

    @property
    def world_size(self) -> int:
        """The engine's GPU workers (vLLM: tensor x data parallel), as TRL's server reports it: the
        trainer's client joins the NCCL weight-transfer group as rank world_size."""
        return int(getattr(self.engine, "world_size", self.cfg.data_parallel_size))

    @property
    def model_id(self) -> str:
        return self.cfg.model or "embedded:smollm2-135m-instruct"

    @property
    def logprobs_mode(self) -> str:
        """What the engine's logprobs are, in vLLM's names (vLLM's own default: raw_logprobs)."""
        mode = getattr(self.engine, "logprobs_mode", "raw_logprobs")
        return {"processed": "processed_logprobs", "raw": "raw_logprobs"}.get(mode, mode)

    def reset_prefix_cache(self) -> dict[str, Any]:
        if not isinstance(self.engine, PrefixCached):
            raise HTTPError(501, f"engine '{self.cfg.engine}' has no prefix cache to reset")
        self.engine.reset_prefix_cache()
        return {"success": True}

    def server_info(self) -> dict[str, Any]:
        nccl = isinstance(self.engine, NCCLWeightReceiver)
        return {
            "vllm_config": {
                "model_config": {"model": self.model_id, "logprobs_mode": self.logprobs_mode},
                "weight_transfer_config": {"backend": "nccl"} if nccl else None,
                "deep_math": self.config(),
            }
        }

    def weights_hash(self) -> dict[str, Any]:
        if isinstance(self.engine, WeightsHashable):
            return {"hash": self.engine.weights_hash(), "version": self.version}
        model = getattr(self.engine, "model", None)
        if model is None:
            raise HTTPError(501, f"engine '{self.cfg.engine}' does not expose its weights for hashing")
        with self._update_lock:
            return {"hash": state_dict_hash(model), "version": self.version}

    # --- generation -------------------------------------------------------------------------
    def agent_generate(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt_ids = body.get("prompt_ids")
        if not isinstance(prompt_ids, list) or not prompt_ids:
            raise HTTPError(400, "prompt_ids must be a non-empty list of token-id lists")
        prompt_ids = (
            _token_id_prompts(prompt_ids)
            if isinstance(prompt_ids[0], list)
            else _token_id_prompts([prompt_ids])
        )
        raw = body.get("sampling", {})
        sampling = [sampling_from_json(s) for s in raw] if isinstance(raw, list) else sampling_from_json(raw)
        if isinstance(sampling, list) and len(sampling) != len(prompt_ids):
            raise HTTPError(400, f"got {len(prompt_ids)} prompts but {len(sampling)} sampling params")
        traces = self.runner.run(prompt_ids, sampling, lora_path=body.get("lora_path"))
        return {"traces": [t.to_dict() for t in traces], "weights_version": self.version}

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM `/v1/completions` for token-id prompts: one choice per (prompt, sample), prompt-major.
        A parameter this server would not honour is refused (400), never silently ignored."""
        _check_completion_keys(body)
        prompts = _token_id_prompts(body.get("prompt"))
        n = int(body.get("n", 1))
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        seed = body.get("seed")
        params = dict(
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            top_k=int(body.get("top_k", 0) or 0),
            max_tokens=int(body.get("max_tokens", 16)),
            stop=stop,
        )
        # vLLM names adapters through "model"; a name other than the served model is an adapter.
        model = body.get("model")
        lora_path = body.get("lora_path") or (model if model not in (None, self.model_id) else None)
        requests = []
        for p in prompts:
            for k in range(n):
                # The first sample keeps the request's seed; the others get derived, independent streams.
                k_seed = (
                    None if seed is None else int(seed) if k == 0 else derive_seed(int(seed), "completion", k)
                )
                s = sampling_from_json({**params, "seed": k_seed})
                requests.append(GenRequest(list(p), s, lora_path))
        results = self.engine.generate(requests)
        want_logprobs = body.get("logprobs") is not None
        choices = []
        for i, (req, res) in enumerate(zip(requests, results, strict=True)):
            choice = {
                "index": i,
                "text": res.text,
                "token_ids": res.token_ids,
                "prompt_token_ids": req.prompt_ids,
                "finish_reason": "length" if res.finish_reason == "length" else "stop",
                "stop_reason": res.stop_string,
                "logprobs": None,
            }
            if want_logprobs:
                choice["logprobs"] = {
                    "tokens": [f"token_id:{t}" for t in res.token_ids],
                    "token_logprobs": res.logprobs,
                    "top_logprobs": [None] * len(res.token_ids),
                    "text_offset": [],
                }
            choices.append(choice)
        usage = {
            "prompt_tokens": sum(len(p) for p in prompts) * n,
            "completion_tokens": sum(len(r.token_ids) for r in results),
        }
        return {"object": "text_completion", "model": self.model_id, "choices": choices, "usage": usage}

    # --- weight updates ---------------------------------------------------------------------
    def start_weight_update(self) -> dict[str, Any]:
        with self._update_lock:
            self._staged = {}
        if isinstance(self.engine, UpdateWindow):
            self.engine.start_weight_update()
        return {"success": True}

    def stage(self, tensors: dict[str, Any]) -> dict[str, Any]:
        with self._update_lock:
            if self._staged is None:
                raise HTTPError(400, "no weight update in progress: POST /start_weight_update first")
            self._staged.update(tensors)
            return {"success": True, "staged": len(self._staged)}

    def _nccl_hook(self, name: str):
        hook = getattr(self.engine, name) if isinstance(self.engine, NCCLWeightReceiver) else None
        if hook is None:
            raise HTTPError(
                501, f"engine '{self.cfg.engine}' has no NCCL weight transfer; use /update_weights_http"
            )
        return hook

    def update_weights_nccl(self, body: dict[str, Any]) -> dict[str, Any]:
        self._nccl_hook("update_weights_nccl")(body.get("update_info", {}))
        return {"success": True}

    def init_weight_transfer(self, body: dict[str, Any]) -> dict[str, Any]:
        self._nccl_hook("init_weight_transfer")(body.get("init_info", {}))
        return {"success": True}

    def finish_weight_update(self) -> dict[str, Any]:
        with self._update_lock:
            staged, self._staged = self._staged, None
            if staged:
                if not isinstance(self.engine, WeightsUpdatable):
                    raise HTTPError(501, f"engine '{self.cfg.engine}' cannot take weights over HTTP")
                try:
                    self.engine.update_weights(staged)
                except (KeyError, ValueError) as exc:
                    raise HTTPError(400, f"weight update refused: {exc}") from exc
            if isinstance(self.engine, UpdateWindow):
                self.engine.finish_weight_update()
            self.version += 1
            log.info("Weight update %d applied (%d tensors over HTTP)", self.version, len(staged or {}))
            return {"success": True, "version": self.version}

    def abort_weight_update(self) -> dict[str, Any]:
        with self._update_lock:
            dropped = len(self._staged or {})
            self._staged = None
        if isinstance(self.engine, UpdateWindow):  # e.g. vllm: releases its open update
            self.engine.abort_weight_update()
        log.warning("Weight update aborted by the client (%d staged tensors dropped)", dropped)
        return {"success": True, "version": self.version}

    def close(self) -> None:
        self.runner.close()
        self.engine.close()


def load_safetensors_bytes(data: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # any parse failure is the client's bad request
        raise HTTPError(400, f"body is not a safetensors payload: {exc}") from exc


def _load_file(body: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = body.get("path")
    if not path or not Path(path).is_file():
        raise HTTPError(400, f"weights file {path!r} not found on the server")
    return load_file(path)
