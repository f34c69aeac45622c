"""Agentic generation server (the paper's Figure 1): engine + agent runner + sandbox next to the GPU.

    python -m deep_math.vllm_serve_agent --model Qwen/Qwen3-4B-Thinking-2507 --max_steps 50 \\
        --max_agent_output 5000 [--engine vllm|transformers] [--data_parallel_size N] \\
        [--config configs/vllm_agent_server.yaml] [--host 127.0.0.1] [--port 8000]

The trainer (`deep_math.vllm_client.AgentVLLMClient`, a subclass of TRL's `VLLMClient`) sends
prompt token ids and sampling settings; the server runs one full agent trace per prompt (model
text, `<tool_call>` snippets in the sandbox, folded outputs) and answers with token ids, logprobs
and env masks. Stdlib `ThreadingHTTPServer`: one thread per request; the agent runner runs the
traces of a request concurrently and the engine batches across requests.

Endpoints (JSON unless stated). Errors are `{"error": message, "type": name}` with an HTTP status
(400 bad request, 404 unknown path, 500 engine failure, 501 unsupported by this engine); never
placeholder tokens.
- GET  /health                  -> {"status": "ok"}
- GET  /config                  -> agent settings for the start-up handshake (max_steps, max_agent_output, ...)
- GET  /v1/models, /get_world_size, /server_info   (what TRL's VLLMClient reads)
- GET  /weights_hash            -> {"hash": sha256 of the served weights, "version": updates applied}
- POST /agent/generate          {"prompt_ids": [[int]], "sampling": {...} | [{...}], "lora_path"?}
                                -> {"traces": [Trace fields]}
- POST /v1/completions          vLLM-compatible plain generation from token-id prompts
                                (`return_token_ids`, `logprobs`, `stop`, `n`, `seed`)
- Weight updates, TRL's protocol: POST /start_weight_update, then either
    POST /update_weights {"update_info"} (NCCL, vLLM engine; after /init_weight_transfer_engine), or
    POST /update_weights_http (body: safetensors bytes) / POST /update_weights_file {"path"}
  then POST /finish_weight_update -> {"version"} (or /abort_weight_update). HTTP/file tensors are staged and applied at
  finish, at once, so no generation sees half-updated weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import threading
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from deep_math.agent.config import AgentConfig
from deep_math.config_utils import ConfigError, build_dataclass
from deep_math.engines.base import EngineError, GenRequest, SamplingParams

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
HANDSHAKE_KEYS = ("max_steps", "max_agent_output")


@dataclass
class ServerConfig:
    """model: null -> the embedded SmolLM2. engine: transformers | vllm (| scripted in tests).
    tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len,
    enable_prefix_caching: vLLM's settings of the same names, as TRL's `vllm-serve` takes them (vllm
    only; None keeps vLLM's default). engine_kwargs: passed to the engine as is."""

    model: str | None = None
    engine: str = "transformers"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    dtype: str = "auto"
    max_steps: int = 50
    max_agent_output: int = 5000
    max_concurrency: int = 64
    sandbox_timeout: float = 20.0
    sandbox_memory_mb: int = 2048
    max_output_chars: int = 2000
    allow_degraded_network: bool = False
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool | None = None
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.engine != "vllm":
            defaults = {"tensor_parallel_size": 1, "data_parallel_size": 1}
            vllm_only = [
                f"{k} {v}"
                for k, v in self.vllm_settings().items()
                if defaults.get(k, v) != v or k not in defaults
            ]
            if vllm_only:
                raise ValueError(f"{', '.join(vllm_only)} needs --engine vllm (got {self.engine})")

    def vllm_settings(self) -> dict[str, Any]:
        """The vLLM engine's own settings that are set (TP and DP always)."""
        names = ("gpu_memory_utilization", "max_model_len", "enable_prefix_caching")
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "data_parallel_size": self.data_parallel_size,
            **{name: getattr(self, name) for name in names if getattr(self, name) is not None},
        }

    def agent_config(self) -> AgentConfig:
        return AgentConfig(
            max_steps=self.max_steps,
            max_agent_output=self.max_agent_output,
            max_concurrency=self.max_concurrency,
            sandbox_timeout=self.sandbox_timeout,
            sandbox_memory_mb=self.sandbox_memory_mb,
            max_output_chars=self.max_output_chars,
            allow_degraded_network=self.allow_degraded_network,
        )


class HTTPError(Exception):
    """An error answered with `status` and `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def build_server_engine(cfg: ServerConfig) -> Any:
    from deep_math.engines import build_engine

    if cfg.engine == "transformers":
        return build_engine(
            "transformers",
            model_name_or_path=cfg.model,
            device=cfg.device,
            dtype=cfg.dtype,
            max_batch_size=cfg.max_batch_size,
            batch_wait_ms=cfg.batch_wait_ms,
            **cfg.engine_kwargs,
        )
    if cfg.engine == "vllm":
        return build_engine(
            "vllm", model_name_or_path=cfg.model, **{**cfg.vllm_settings(), **cfg.engine_kwargs}
        )
    return build_engine(cfg.engine, **cfg.engine_kwargs)


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


class AgentService:
    """The server's state: engine, agent runner (with its sandbox) and weight updates."""

    def __init__(self, cfg: ServerConfig, engine: Any = None, sandbox: Any = None):
        from deep_math.agent.runner import AgentRunner

        self.cfg = cfg
        self.engine = engine if engine is not None else build_server_engine(cfg)
        self.runner = AgentRunner(self.engine, cfg.agent_config(), sandbox=sandbox)
        self.version = 0
        self._staged: dict[str, Any] | None = None
        self._update_lock = threading.Lock()

    # --- reads ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        agent = asdict(self.cfg.agent_config())
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

    def server_info(self) -> dict[str, Any]:
        nccl = hasattr(self.engine, "init_weight_transfer")
        return {
            "vllm_config": {
                "model_config": {"model": self.model_id, "logprobs_mode": "processed_logprobs"},
                "weight_transfer_config": {"backend": "nccl"} if nccl else None,
                "deep_math": self.config(),
            }
        }

    def weights_hash(self) -> dict[str, Any]:
        if hasattr(self.engine, "weights_hash"):
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
        """vLLM `/v1/completions` for token-id prompts: one choice per (prompt, sample), prompt-major."""
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
                s = sampling_from_json({**params, "seed": None if seed is None else int(seed) + k})
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
        if hasattr(self.engine, "start_weight_update"):
            self.engine.start_weight_update()
        return {"success": True}

    def stage(self, tensors: dict[str, Any]) -> dict[str, Any]:
        with self._update_lock:
            if self._staged is None:
                raise HTTPError(400, "no weight update in progress: POST /start_weight_update first")
            self._staged.update(tensors)
            return {"success": True, "staged": len(self._staged)}

    def _nccl_hook(self, name: str):
        hook = getattr(self.engine, name, None)
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
                if not hasattr(self.engine, "update_weights"):
                    raise HTTPError(501, f"engine '{self.cfg.engine}' cannot take weights over HTTP")
                try:
                    self.engine.update_weights(staged)
                except (KeyError, ValueError) as exc:
                    raise HTTPError(400, f"weight update refused: {exc}") from exc
            if hasattr(self.engine, "finish_weight_update"):
                self.engine.finish_weight_update()
            self.version += 1
            log.info("Weight update %d applied (%d tensors over HTTP)", self.version, len(staged or {}))
            return {"success": True, "version": self.version}

    def abort_weight_update(self) -> dict[str, Any]:
        with self._update_lock:
            dropped = len(self._staged or {})
            self._staged = None
        if hasattr(self.engine, "abort_weight_update"):  # e.g. vllm: releases its open update
            self.engine.abort_weight_update()
        log.warning("Weight update aborted by the client (%d staged tensors dropped)", dropped)
        return {"success": True, "version": self.version}

    def close(self) -> None:
        self.runner.close()
        self.engine.close()


def state_dict_hash(model: Any) -> str:
    """sha256 over the names and bytes of `model.state_dict()` (sorted by name)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_safetensors_bytes(data: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the client's bad request
        raise HTTPError(400, f"body is not a safetensors payload: {exc}") from exc


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the server's `AgentService` (`self.server.service`)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    @property
    def service(self) -> AgentService:
        return self.server.service  # type: ignore[attr-defined]

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json(self) -> dict[str, Any]:
        raw = self._body()
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise HTTPError(400, f"body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise HTTPError(400, "body must be a JSON object")
        return data

    def _dispatch(self, routes: dict[str, Any]) -> None:
        path = self.path.split("?", 1)[0]
        try:
            handler = routes.get(path)
            if handler is None:
                raise HTTPError(404, f"unknown path {path}; known: {sorted(routes)}")
            self._send(200, handler())
        except HTTPError as exc:
            self._send(exc.status, {"error": str(exc), "type": "HTTPError"})
        except (EngineError, RuntimeError, OSError) as exc:
            log.exception("%s %s failed", self.command, path)
            self._send(500, {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__})
        except (ValueError, TypeError, KeyError) as exc:
            self._send(400, {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__})

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        s = self.service
        self._dispatch(
            {
                "/health": lambda: {"status": "ok"},
                "/config": s.config,
                "/v1/models": lambda: {"object": "list", "data": [{"id": s.model_id, "object": "model"}]},
                "/get_world_size": lambda: {"world_size": s.world_size},
                "/server_info": s.server_info,
                "/weights_hash": s.weights_hash,
            }
        )

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        s = self.service
        self._dispatch(
            {
                "/agent/generate": lambda: s.agent_generate(self._json()),
                "/v1/completions": lambda: s.completions(self._json()),
                "/init_weight_transfer_engine": lambda: s.init_weight_transfer(self._json()),
                "/start_weight_update": lambda: (self._body(), s.start_weight_update())[1],
                "/update_weights": lambda: s.update_weights_nccl(self._json()),
                "/update_weights_http": lambda: s.stage(load_safetensors_bytes(self._body())),
                "/update_weights_file": lambda: s.stage(_load_file(self._json())),
                "/finish_weight_update": lambda: (self._body(), s.finish_weight_update())[1],
                "/abort_weight_update": lambda: (self._body(), s.abort_weight_update())[1],
                "/reset_prefix_cache": lambda: (self._body(), {"success": True})[1],
            }
        )


def _load_file(body: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = body.get("path")
    if not path or not Path(path).is_file():
        raise HTTPError(400, f"weights file {path!r} not found on the server")
    return load_file(path)


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, service: AgentService, host: str, port: int):
        super().__init__((host, port), Handler)
        self.service = service


# --- command line -----------------------------------------------------------------------------


def _flag(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    """Flags override the --config YAML, which overrides the ServerConfig defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m deep_math.vllm_serve_agent", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config", help="YAML file with ServerConfig keys (e.g. configs/vllm_agent_server.yaml)"
    )
    for f in fields(ServerConfig):
        if f.name == "engine_kwargs":
            parser.add_argument("--engine_kwargs", type=json.loads, help="JSON object passed to the engine")
            continue
        kind = {"int": int, "float": float, "bool": _flag}.get(str(f.type).replace(" | None", ""), str)
        parser.add_argument(f"--{f.name}", type=kind, default=None)
    args = vars(parser.parse_args(argv))
    data: dict[str, Any] = {}
    config_path = args.pop("config")
    if config_path:
        import yaml

        data = yaml.safe_load(Path(config_path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{config_path} must hold a mapping of ServerConfig keys")
    data.update({k: v for k, v in args.items() if v is not None})
    return build_dataclass(ServerConfig, data)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
    except ConfigError as exc:
        raise SystemExit(f"Config error: {exc}") from None
    service = AgentService(cfg)
    server = AgentServer(service, cfg.host, cfg.port)
    log.info(
        "Agent server for %s (engine %s, max_steps %d, max_agent_output %d) on http://%s:%d",
        service.model_id,
        cfg.engine,
        cfg.max_steps,
        cfg.max_agent_output,
        cfg.host,
        server.server_address[1],
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.close()


if __name__ == "__main__":
    main()
