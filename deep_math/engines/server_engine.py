"""HTTP client engine for a vLLM OpenAI-compatible server (`vllm serve` or our agent server).

One POST `/v1/completions` per request, with token ids as the prompt:
    {"model", "prompt": [ids], "max_tokens", "temperature", "top_p", "top_k", "stop",
     "include_stop_str_in_output": true, "logprobs": 0, "seed", "return_token_ids": true}
and reads from `choices[0]`: `token_ids` (vLLM's `return_token_ids` extension; the prompt's ids
come back as `prompt_token_ids`), `logprobs.token_logprobs`, `finish_reason`, `stop_reason`.
`lora_path` of a request is sent as the model name (vLLM serves adapters under the name they were
loaded with, e.g. `--lora-modules name=path`), so pass the served adapter name there.

Concurrency: requests run in parallel on a thread pool (the server batches them); one
`requests.Session` per worker thread (Session is not documented as thread-safe).
Errors (connection, timeout, HTTP status >= 400, malformed body) raise EngineError with the
status and the server's message; nothing is retried here.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from deep_math.engines.base import EngineError, GenRequest, GenResult
from deep_math.engines.stops import decode
from deep_math.engines.vllm.engine import map_finish_reason
from deep_math.models import load_tokenizer

log = logging.getLogger(__name__)


class ServerEngine:
    """base_url: server root (".../v1" is added). model: served model name; None asks the
    server (`GET /v1/models`, first entry) on first use. tokenizer: name/path (loaded with
    `load_tokenizer`) or a tokenizer object; None -> the served model name, else the embedded
    model's. timeout: seconds per HTTP request. max_workers: parallel HTTP requests."""

    name = "server"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        model: str | None = None,
        tokenizer: Any = None,
        timeout: float = 600,
        max_workers: int = 64,
    ):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.timeout = timeout
        self._model = model
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or model)
        self.tokenizer = tokenizer
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="server-engine")
        self._local = threading.local()
        self._model_lock = threading.Lock()

    @property
    def model(self) -> str:
        """The served model name (asked from the server once when not given)."""
        with self._model_lock:
            if self._model is None:
                body = self._call("GET", "/v1/models")
                try:
                    self._model = body["data"][0]["id"]
                except (KeyError, IndexError, TypeError) as exc:
                    raise EngineError(f"{self.base_url}/v1/models lists no model: {body!r}") from exc
            return self._model

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """All requests in parallel; raises EngineError for the first failing one (in order)."""
        model = self.model
        futures = [self._pool.submit(self._one, model, r) for r in requests]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def payload(self, model: str, request: GenRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": request.lora_path or model,
            "prompt": list(request.prompt_ids),
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k if s.top_k > 0 else -1,
            "stop": list(s.stop),
            "include_stop_str_in_output": True,
            "logprobs": 0,
            "return_token_ids": True,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        return body

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _call(self, method: str, path: str, json: dict[str, Any] | None = None) -> Any:
        url = self.base_url + path
        try:
            response = self._session().request(method, url, json=json, timeout=self.timeout)
        except requests.RequestException as exc:
            raise EngineError(f"{method} {url} failed: {exc}") from exc
        if response.status_code >= 400:
            raise EngineError(f"{method} {url} -> HTTP {response.status_code}: {_error_message(response)}")
        try:
            return response.json()
        except ValueError as exc:
            raise EngineError(f"{method} {url} returned non-JSON: {response.text[:200]!r}") from exc

    def _one(self, model: str, request: GenRequest) -> GenResult:
        body = self._call("POST", "/v1/completions", self.payload(model, request))
        try:
            choice = body["choices"][0]
            token_ids = [int(t) for t in choice["token_ids"]]
            logprobs = [float(x) for x in choice["logprobs"]["token_logprobs"]]
            finish = map_finish_reason(choice.get("finish_reason"), choice.get("stop_reason"))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineError(
                f"unexpected /v1/completions response (is return_token_ids supported by this server?): "
                f"{str(body)[:300]}"
            ) from exc
        stop_reason = choice.get("stop_reason")
        ends_on_eos = (
            finish == "eos" and token_ids and token_ids[-1] in {self.tokenizer.eos_token_id, stop_reason}
        )
        return GenResult(
            token_ids=token_ids,
            logprobs=logprobs,
            text=decode(self.tokenizer, token_ids[:-1] if ends_on_eos else token_ids),
            finish_reason=finish,
            stop_string=stop_reason if finish == "stop" else None,
        )


def _error_message(response: requests.Response) -> str:
    """vLLM errors look like {"error": {"message": ...}} or {"message": ...}; else raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if "message" in body:
            return str(body["message"])
    return str(body)[:500]
