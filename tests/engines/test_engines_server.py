"""ServerEngine against a tiny local HTTP server that answers in vLLM's /v1/completions format."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from deep_math.engines.base import EngineError, GenRequest, SamplingParams
from deep_math.engines.server_engine import ServerEngine
from deep_math.models import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


class FakeVLLMServer:
    """Records every POSTed JSON body; `reply(body) -> (status, json)` builds the answer."""

    def __init__(self, reply: Callable[[dict[str, Any]], tuple[int, Any]]):
        self.bodies: list[dict[str, Any]] = []
        self.reply = reply
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "served-model", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append({"path": self.path, **body})
                self._send(*server.reply(body))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(token_ids: list[int], finish: str, stop_reason: Any = None) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "served-model",
        "choices": [
            {
                "index": 0,
                "text": "server text",
                "logprobs": {
                    "text_offset": list(range(len(token_ids))),
                    "token_logprobs": [-0.25 * (i + 1) for i in range(len(token_ids))],
                    "tokens": [f"token_id:{t}" for t in token_ids],
                    "top_logprobs": None,
                },
                "finish_reason": finish,
                "stop_reason": stop_reason,
                "token_ids": token_ids,
                "prompt_token_ids": [1, 2, 3],
            }
        ],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": len(token_ids),
            "total_tokens": 3 + len(token_ids),
        },
    }


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeVLLMServer]]:
    servers: list[FakeVLLMServer] = []

    def start(reply: Callable[[dict[str, Any]], tuple[int, Any]]) -> FakeVLLMServer:
        servers.append(FakeVLLMServer(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_payload_and_result_mapping(serve, tok):
    stop_ids = tok("y = 3</tool_call>", add_special_tokens=False)["input_ids"]

    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        if body["prompt"] == [1, 2, 3]:
            return 200, completion(stop_ids, "stop", "</tool_call>")
        if body["prompt"] == [4]:
            return 200, completion([11, 12, tok.eos_token_id], "stop", None)
        return 200, completion([7, 8], "length")

    server = serve(reply)
    engine = ServerEngine(base_url=server.url + "/v1", tokenizer=tok)
    stop, eos, length = engine.generate(
        [
            GenRequest(
                [1, 2, 3],
                SamplingParams(
                    temperature=0.6, top_p=0.95, top_k=20, max_tokens=64, stop=["</tool_call>"], seed=7
                ),
            ),
            GenRequest([4], SamplingParams(temperature=0, max_tokens=8)),
            GenRequest([5], SamplingParams(max_tokens=2), lora_path="my-adapter"),
        ]
    )
    bodies = {tuple(b["prompt"]): b for b in server.bodies}
    assert bodies[(1, 2, 3)] == {
        "path": "/v1/completions",
        "model": "served-model",  # asked from GET /v1/models
        "prompt": [1, 2, 3],
        "max_tokens": 64,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "stop": ["</tool_call>"],
        "include_stop_str_in_output": True,
        "logprobs": 0,
        "seed": 7,
        "return_token_ids": True,
    }
    assert "seed" not in bodies[(4,)] and bodies[(4,)]["top_k"] == -1
    assert bodies[(5,)]["model"] == "my-adapter"
    assert (stop.finish_reason, stop.stop_string, stop.token_ids) == ("stop", "</tool_call>", stop_ids)
    assert stop.text == "y = 3</tool_call>"
    assert stop.logprobs == [-0.25 * (i + 1) for i in range(len(stop_ids))]
    assert (eos.finish_reason, eos.token_ids[-1]) == ("eos", tok.eos_token_id)
    assert (length.finish_reason, length.token_ids) == ("length", [7, 8])
    engine.close()


def test_concurrent_requests(serve, tok):
    server = serve(lambda body: (200, completion([body["prompt"][0]], "length")))
    engine = ServerEngine(base_url=server.url, model="m", tokenizer=tok, max_workers=8)
    results = engine.generate([GenRequest([i], SamplingParams(max_tokens=1)) for i in range(1, 41)])
    assert [r.token_ids for r in results] == [[i] for i in range(1, 41)]
    assert len(server.bodies) == 40
    engine.close()


def test_http_error_becomes_engine_error(serve, tok):
    server = serve(lambda body: (400, {"object": "error", "message": "max_tokens is too large", "code": 400}))
    engine = ServerEngine(base_url=server.url, model="m", tokenizer=tok)
    with pytest.raises(EngineError, match=r"HTTP 400: max_tokens is too large"):
        engine.generate([GenRequest([1], SamplingParams(max_tokens=10**6))])
    engine.close()


def test_missing_token_ids_is_explained(serve, tok):
    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        answer = completion([5], "length")
        del answer["choices"][0]["token_ids"]
        return 200, answer

    engine = ServerEngine(base_url=serve(reply).url, model="m", tokenizer=tok)
    with pytest.raises(EngineError, match="return_token_ids"):
        engine.generate([GenRequest([1], SamplingParams(max_tokens=1))])
    engine.close()


def test_unreachable_server(tok):
    engine = ServerEngine(base_url="http://127.0.0.1:9", model="m", tokenizer=tok, timeout=2)
    with pytest.raises(EngineError, match="failed"):
        engine.generate([GenRequest([1], SamplingParams(max_tokens=1))])
    engine.close()
