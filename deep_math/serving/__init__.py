"""The agent server (the paper's Figure 1): engine + agent runner + sandbox next to the GPU.

    python -m deep_math.serving   (or the paper's: python -m deep_math.vllm_serve_agent) --model Qwen/Qwen3-4B-Thinking-2507 --max_steps 50 \\
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

Modules: config.py (ServerConfig, command line), service.py (AgentService: engine, agent runner,
weight updates), http.py (routes), client.py (the trainer's client), __main__.py.
"""

from deep_math.serving.config import HANDSHAKE_KEYS, PROTOCOL_VERSION, ServerConfig, parse_args
from deep_math.serving.http import AgentServer, Handler
from deep_math.serving.service import AgentService, HTTPError, build_server_engine, sampling_from_json

__all__ = [
    "HANDSHAKE_KEYS",
    "PROTOCOL_VERSION",
    "AgentServer",
    "AgentService",
    "HTTPError",
    "Handler",
    "ServerConfig",
    "build_server_engine",
    "parse_args",
    "sampling_from_json",
]
