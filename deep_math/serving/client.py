"""Client of the agent server (`deep_math.serving`): TRL's `VLLMClient` plus agentic generation and a handshake.

    client = AgentVLLMClient(base_url="http://127.0.0.1:8000", connection_timeout=240)
    client.check_compatible(max_steps=50, max_agent_output=5000)   # refuses a mismatched server
    traces = client.generate_agent(prompt_ids, SamplingParams(temperature=1.2, max_tokens=5000))
    client.push_weights(lambda: iter_policy_weights(model))        # NCCL on CUDA, else HTTP

Inherited from TRL (same endpoints on this server): `generate` (`/v1/completions` with token-id
prompts), `get_world_size`, `get_server_info`, `weight_update`, `reset_prefix_cache`, and the NCCL
path (`init_communicator`, `update_named_params`) when vLLM is installed and the trainer is on CUDA.
TRL's constructor refuses to run without vLLM installed, so this class sets up the same HTTP
session itself; everything else is TRL's code.

Errors from the server raise `ServerError` with the HTTP status and the server's message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter
from trl.generation.vllm_client import VLLMClient
from urllib3.util.retry import Retry

from deep_math.agent.trace import Trace
from deep_math.engines.base import EngineError, SamplingParams
from deep_math.engines.weights import HTTP_CHUNK_BYTES, tensor_chunks

log = logging.getLogger(__name__)

NamedTensors = Iterable[tuple[str, Any]]


class ServerError(EngineError):
    """The agent server answered with an error status; `status` and the server's message."""

    def __init__(self, status: int, message: str, url: str = ""):
        super().__init__(f"{url} -> HTTP {status}: {message}")
        self.status = status
        self.message = message


class HandshakeError(RuntimeError):
    """The server's agent settings differ from the trainer's."""


class AgentVLLMClient(VLLMClient):
    """See the module docstring. request_timeout: seconds per HTTP request (None: no limit)."""

    def __init__(
        self,
        base_url: str | None = None,
        host: str = "127.0.0.1",
        server_port: int = 8000,
        group_port: int = 51216,
        connection_timeout: float = 0.0,
        request_timeout: float | None = None,
    ):
        self.session = requests.Session()
        # Retry only connection problems and 502/503; a 500 is a real error reported as such.
        retry = Retry(
            total=3,
            connect=3,
            read=0,
            status=2,
            status_forcelist=[502, 503],
            backoff_factor=1,
            allowed_methods=["GET", "POST"],
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=64)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if base_url is not None:
            parsed = urlparse(base_url)
            self.host = parsed.hostname
            self.base_url = f"{parsed.scheme or 'http'}://{parsed.netloc}{parsed.path}".rstrip("/")
        else:
            self.host, self.server_port = host, server_port
            self.base_url = f"http://{host}:{server_port}"
        self.group_port = group_port
        self.request_timeout = request_timeout
        self.communicator = None
        self._updating_weights = False
        self.check_server(connection_timeout)
        self.model = self._get(f"{self.base_url}/v1/models")["data"][0]["id"]

    # --- HTTP -------------------------------------------------------------------------------
    def _check(self, response: requests.Response, url: str) -> dict:
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ServerError(response.status_code, str(message), url)
        return response.json()

    def _get(self, url: str, **kwargs: Any) -> dict:
        kwargs.setdefault("timeout", self.request_timeout)
        return self._check(self.session.get(url, **kwargs), url)

    def _post(self, url: str, **kwargs: Any) -> dict:
        kwargs.setdefault("timeout", self.request_timeout)
        return self._check(self.session.post(url, **kwargs), url)

    # --- handshake --------------------------------------------------------------------------
    def server_config(self) -> dict[str, Any]:
        return self._get(f"{self.base_url}/config")

    def check_compatible(self, **expected: Any) -> dict[str, Any]:
        """Raise HandshakeError unless the server's settings equal `expected` (e.g. max_steps,
        max_agent_output); returns the server's config."""
        config = self.server_config()
        wrong = {k: (config.get(k), v) for k, v in expected.items() if config.get(k) != v}
        if wrong:
            detail = ", ".join(f"{k}: server {s!r} vs trainer {t!r}" for k, (s, t) in wrong.items())
            flags = " ".join(f"--{k} {t}" for k, (_, t) in wrong.items())
            raise HandshakeError(
                f"The agent server at {self.base_url} runs different agent settings ({detail}). Restart it "
                f"with {flags}, or set agent.<key> in the training config to the server's values."
            )
        return config

    # --- generation -------------------------------------------------------------------------
    def generate_agent(
        self,
        prompt_ids: Sequence[list[int]],
        sampling: SamplingParams | Sequence[SamplingParams],
        lora_path: str | None = None,
    ) -> list[Trace]:
        """One full agent trace per prompt, in order (a failed trace has finish_reason "error")."""
        payload: dict[str, Any] = {
            "prompt_ids": [list(p) for p in prompt_ids],
            "sampling": asdict(sampling)
            if isinstance(sampling, SamplingParams)
            else [asdict(s) for s in sampling],
        }
        if lora_path:
            payload["lora_path"] = lora_path
        traces = self._post(f"{self.base_url}/agent/generate", json=payload)["traces"]
        if len(traces) != len(prompt_ids):
            raise ServerError(200, f"server returned {len(traces)} traces for {len(prompt_ids)} prompts")
        return [Trace(**t) for t in traces]

    def weights_hash(self) -> dict[str, Any]:
        return self._get(f"{self.base_url}/weights_hash")

    # --- weights ----------------------------------------------------------------------------
    def init_weight_transport(self, device: Any) -> str:
        """Pick the weight transport and return its name: "nccl" when the trainer is on CUDA, vLLM
        is installed and the server has a weight-transfer engine (TRL's `init_communicator` then
        opens the NCCL group); otherwise "http" (nothing to set up)."""
        import torch
        from trl.import_utils import is_vllm_available

        info = self.get_server_info()
        on_cuda = torch.device(device).type == "cuda"
        if on_cuda and is_vllm_available() and info.get("weight_transfer_config"):
            self.init_communicator(device)
            return "nccl"
        return "http"

    def push_weights(self, make_iter: Callable[[], NamedTensors], chunk_bytes: int = HTTP_CHUNK_BYTES) -> int:
        """Replace the server's weights; returns the server's new weights version.

        make_iter: returns a fresh iterator of `(name, tensor)` (NCCL needs two passes: the
        metadata first, then the stream). Over HTTP, tensors are copied to CPU and sent as
        safetensors in chunks of about `chunk_bytes`; the server applies them at the end."""
        if self.communicator is not None:
            metadata = [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in make_iter()]
            with self.weight_update():
                self.update_named_params(metadata, iter(make_iter()))
            return int(self.server_config()["weights_version"])
        self._start_weight_update()
        try:
            for chunk in tensor_chunks(make_iter(), chunk_bytes):
                self._post_tensors(chunk)
        except BaseException:
            self._post(f"{self.base_url}/abort_weight_update", json={})  # never apply half an update
            raise
        return int(self._post(f"{self.base_url}/finish_weight_update", json={})["version"])

    def _post_tensors(self, tensors: dict[str, Any]) -> None:
        from safetensors.torch import save

        self._post(
            f"{self.base_url}/update_weights_http",
            data=save(tensors),
            headers={"Content-Type": "application/octet-stream"},
        )

    def close(self) -> None:
        self.close_communicator()
        self.session.close()
