"""The HTTP face of `AgentService`: stdlib `ThreadingHTTPServer`, one thread per request, JSON
bodies; errors are `{"error", "type"}` with a status (400 bad request, 404, 500 engine failure,
501 unsupported by this engine), never placeholder tokens."""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deep_math.engines.base import EngineError
from deep_math.serving.service import AgentService, HTTPError, _load_file, load_safetensors_bytes

log = logging.getLogger(__name__)


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
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client left; its work is already done
            self.close_connection = True
            log.info("%s %s: client disconnected before the answer", self.command, self.path)

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
        except Exception as exc:  # vLLM's engine core reports failures as a plain Exception
            log.exception("%s %s failed", self.command, path)
            self._send(500, {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__})

    def do_GET(self) -> None:
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

    def do_POST(self) -> None:
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
                "/reset_prefix_cache": lambda: (self._body(), s.reset_prefix_cache())[1],
            }
        )


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog. socketserver's default of 5 overflows when a trainer's rollout opens
    # dozens of connections at once: Linux then drops the SYNs past the accept queue (the client
    # retries after 1 s, 3 s, ...) and, with SYN cookies, can reset a connection after its request
    # was sent (seen as "Connection reset by peer" in the 64-client load test).
    request_queue_size = 1024

    def __init__(self, service: AgentService, host: str, port: int):
        super().__init__((host, port), Handler)
        self.service = service
