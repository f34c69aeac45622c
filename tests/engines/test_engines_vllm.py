"""VLLMEngine's NCCL weight-transfer hooks against a fake `vllm` (CPU): what cannot run here.

Everything that runs on CPU is tested against real vLLM in tests/e2e/test_vllm_real.py (`-m vllm`).
NCCL needs GPUs, so the hooks TRL's trainer drives over NCCL are checked against `FakeAsyncLLM`,
which models what vLLM 0.31's AsyncLLM and GPU worker do (read in vllm/v1/engine/async_llm.py and
vllm/v1/worker/gpu_worker.py): `AsyncEngineArgs` refuses unknown arguments; `update_weights` before
`start_weight_update` raises; a failed update ends the worker's session, so a later finish raises;
`pause_generation(mode="wait")` lets requests in flight finish and holds new ones until resume.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from deep_math.engines.base import EngineError, GenRequest, SamplingParams
from deep_math.engines.vllm import WORKER_EXTENSION, DeepMathWorkerExtension, map_finish_reason
from deep_math.models import load_tokenizer

# Field names of vLLM 0.31's EngineArgs that the engine or these tests pass (the real dataclass has
# ~200; an unknown name raises TypeError there, as here).
ENGINE_ARG_NAMES = frozenset(
    {"model", "tensor_parallel_size", "data_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization",
     "seed", "max_model_len", "enable_lora", "max_lora_rank", "weight_transfer_config", "worker_extension_cls",
     "enforce_eager", "dtype", "enable_prefix_caching", "max_num_seqs"}
)  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


class FakeEngineArgs:
    def __init__(self, **kwargs: Any):
        unknown = sorted(set(kwargs) - ENGINE_ARG_NAMES)
        if unknown:
            raise TypeError(f"AsyncEngineArgs.__init__() got an unexpected keyword argument '{unknown[0]}'")
        self.kwargs = kwargs


@dataclass
class FakeWeightTransferConfig:
    backend: str = "nccl"


@dataclass
class FakeInitRequest:
    init_info: dict = field(default_factory=dict)


@dataclass
class FakeUpdateRequest:
    update_info: dict = field(default_factory=dict)


@dataclass
class FakeLogprob:
    logprob: float


@dataclass
class FakeCompletion:
    token_ids: list[int]
    logprobs: list[dict[int, FakeLogprob]]
    finish_reason: str = "length"
    stop_reason: Any = None


@dataclass
class FakeOutput:
    outputs: list[FakeCompletion]


class FakeAsyncLLM:
    """Records every call as (method, argument) in `events`; see the module docstring."""

    made: list[FakeAsyncLLM] = []

    def __init__(self, args: FakeEngineArgs):
        self.args = args.kwargs
        self.events: list[tuple[str, Any]] = []
        self.model_config = types.SimpleNamespace(logprobs_mode="raw_logprobs", max_model_len=4096)
        self.worker_hashes = ["worker-hash"]
        self.fail_update: Exception | None = None
        self.gate = asyncio.Event()  # generate waits for it (tests set it)
        self.gate.set()
        self.in_flight = 0
        self.resumed = asyncio.Event()
        self.resumed.set()
        self._session = False

    @classmethod
    def from_engine_args(cls, args: FakeEngineArgs) -> FakeAsyncLLM:
        llm = cls(args)
        cls.made.append(llm)
        return llm

    async def generate(self, prompt, params, request_id, *, lora_request=None):
        await self.resumed.wait()  # a paused scheduler does not start new requests
        self.in_flight += 1
        self.events.append(("generate", request_id))
        try:
            await self.gate.wait()
            ids = [5, 6]
            yield FakeOutput([FakeCompletion(ids, [{t: FakeLogprob(-0.5)} for t in ids])])
        finally:
            self.in_flight -= 1
        self.events.append(("generate_done", request_id))

    async def abort(self, request_id):
        self.events.append(("abort", request_id))

    async def pause_generation(self, *, mode="abort", clear_cache=True):
        assert mode == "wait"
        self.events.append(("pause_generation", mode))
        self.resumed.clear()
        while self.in_flight:
            await asyncio.sleep(0.01)

    async def resume_generation(self):
        self.events.append(("resume_generation", None))
        self.resumed.set()

    async def init_weight_transfer_engine(self, request):
        self.events.append(("init_weight_transfer_engine", request.init_info))

    async def start_weight_update(self):
        if self._session:
            raise RuntimeError("start_weight_update called while a weight update is already active.")
        self._session = True
        self.events.append(("start_weight_update", None))

    async def update_weights(self, request):
        if not self._session:
            raise RuntimeError("start_weight_update must be called before update_weights.")
        if self.fail_update is not None:
            self._session = False  # the worker resets its session on a failed chunk
            raise self.fail_update
        self.events.append(("update_weights", request.update_info))

    async def finish_weight_update(self, weight_version=None):
        if not self._session:
            raise RuntimeError("finish_weight_update called without a matching start_weight_update.")
        self._session = False
        self.events.append(("finish_weight_update", None))

    async def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False):
        self.events.append(("reset_prefix_cache", None))
        return True

    async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        assert method == "deep_math_weights_hash" and kwargs is None
        return list(self.worker_hashes)

    def shutdown(self, timeout=None):
        self.events.append(("shutdown", None))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@pytest.fixture
def fake_vllm(monkeypatch):
    """Installs a fake `vllm` package in sys.modules; yields the list of AsyncLLMs made."""
    FakeAsyncLLM.made = []
    modules = {name: types.ModuleType(name) for name in (
        "vllm", "vllm.config", "vllm.inputs", "vllm.inputs.engine", "vllm.lora", "vllm.lora.request", "vllm.sampling_params",
        "vllm.v1", "vllm.v1.engine", "vllm.v1.engine.async_llm", "vllm.distributed",
        "vllm.distributed.weight_transfer", "vllm.distributed.weight_transfer.base")}  # fmt: skip
    modules["vllm"].AsyncEngineArgs = FakeEngineArgs
    modules["vllm"].SamplingParams = lambda **kwargs: kwargs
    modules["vllm.config"].WeightTransferConfig = FakeWeightTransferConfig
    modules["vllm.inputs.engine"].tokens_input = lambda ids: {
        "type": "token",
        "prompt_token_ids": ids,
    }  # a TypedDict
    modules["vllm.lora.request"].LoRARequest = lambda *args: args
    modules["vllm.sampling_params"].RequestOutputKind = types.SimpleNamespace(FINAL_ONLY=2)
    modules["vllm.v1.engine.async_llm"].AsyncLLM = FakeAsyncLLM
    modules["vllm.distributed.weight_transfer.base"].WeightTransferInitRequest = FakeInitRequest
    modules["vllm.distributed.weight_transfer.base"].WeightTransferUpdateRequest = FakeUpdateRequest
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return FakeAsyncLLM.made


def make_engine(tok, **kwargs):
    from deep_math.engines import build_engine

    return build_engine("vllm", model_name_or_path="org/model", tokenizer=tok, **kwargs)


REQUEST = [GenRequest([1, 2], SamplingParams(max_tokens=2))]
INIT_INFO = {"master_address": "10.0.0.1", "master_port": 51216, "rank_offset": 1, "world_size": 2}
UPDATE_INFO = {"names": ["model.norm.weight"], "dtype_names": ["bfloat16"], "shapes": [[8]]}


def test_engine_args_world_size_and_unknown_arguments(fake_vllm, tok):
    engine = make_engine(tok, tensor_parallel_size=2, pipeline_parallel_size=2, data_parallel_size=3)
    assert fake_vllm[0].args["worker_extension_cls"] == WORKER_EXTENSION
    assert fake_vllm[0].args["weight_transfer_config"] == FakeWeightTransferConfig("nccl")
    assert engine.world_size == 12  # TP x PP x DP: the trainer joins the NCCL group as rank 12
    engine.close()
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_lora_ranks'"):
        make_engine(tok, max_lora_ranks=8)  # vLLM's own words for a misspelled argument
    assert hasattr(DeepMathWorkerExtension, "deep_math_load_safetensors")


def test_nccl_hooks_pause_generation_and_call_asyncllms_weight_transfer_api(fake_vllm, tok):
    engine = make_engine(tok)
    llm = fake_vllm[0]
    engine.init_weight_transfer(INIT_INFO)
    engine.start_weight_update()
    engine.update_weights_nccl(UPDATE_INFO)
    engine.update_weights_nccl(UPDATE_INFO)  # chunked transfers: several per update
    engine.finish_weight_update()
    assert llm.events == [
        ("init_weight_transfer_engine", INIT_INFO),
        ("pause_generation", "wait"),
        ("start_weight_update", None),
        ("update_weights", UPDATE_INFO),
        ("update_weights", UPDATE_INFO),
        ("finish_weight_update", None),
        ("reset_prefix_cache", None),
        ("resume_generation", None),
    ]
    assert engine.generate(REQUEST)[0].token_ids == [5, 6]
    engine.close()


def test_update_hooks_refuse_out_of_order_calls(fake_vllm, tok):
    engine = make_engine(tok)
    with pytest.raises(RuntimeError, match="no weight update is open"):
        engine.update_weights_nccl(UPDATE_INFO)
    with pytest.raises(RuntimeError, match="no weight update is open"):
        engine.finish_weight_update()
    engine.start_weight_update()
    with pytest.raises(RuntimeError, match="already open"):
        engine.start_weight_update()
    with pytest.raises(RuntimeError, match="while a weight update is open"):
        engine.init_weight_transfer(INIT_INFO)
    engine.abort_weight_update()
    engine.abort_weight_update()  # idempotent
    engine.close()


def test_a_failed_or_aborted_nccl_update_refuses_generation_until_a_complete_one(fake_vllm, tok):
    engine = make_engine(tok)
    llm = fake_vllm[0]
    llm.fail_update = RuntimeError("NCCL timeout")
    engine.start_weight_update()
    with pytest.raises(RuntimeError, match="NCCL timeout"):
        engine.update_weights_nccl(UPDATE_INFO)
    assert llm.names()[-1] == "resume_generation"  # the scheduler is not left paused
    with pytest.raises(EngineError, match="refusing to generate: a weight update failed while loading"):
        engine.generate(REQUEST)
    llm.fail_update = None
    engine.start_weight_update()
    engine.abort_weight_update()
    with pytest.raises(EngineError, match="refusing to generate: the last weight update was aborted"):
        engine.generate(REQUEST)
    engine.start_weight_update()
    engine.finish_weight_update()  # finished with no weights: still not servable
    with pytest.raises(EngineError, match="finished without any weights"):
        engine.generate(REQUEST)
    engine.start_weight_update()
    engine.update_weights_nccl(UPDATE_INFO)
    engine.finish_weight_update()
    assert engine.generate(REQUEST)[0].token_ids == [5, 6]
    engine.close()


def test_weights_hash_combines_worker_hashes(fake_vllm, tok):
    engine = make_engine(tok)
    assert engine.weights_hash() == "worker-hash"
    fake_vllm[0].worker_hashes = ["a", "b"]  # tensor parallel: one hash per worker
    assert engine.weights_hash() == hashlib.sha256(b"ab").hexdigest()
    engine.start_weight_update()
    with pytest.raises(RuntimeError, match="while a weight update is open"):
        engine.weights_hash()
    engine.abort_weight_update()
    engine.close()


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_update_lets_requests_in_flight_finish_and_holds_new_ones_until_finish(fake_vllm, tok):
    engine = make_engine(tok)
    llm = fake_vllm[0]
    engine._loop.call_soon_threadsafe(llm.gate.clear)
    first = threading.Thread(target=engine.generate, args=(REQUEST,))
    first.start()
    _wait_for(lambda: llm.names() == ["generate"])
    starter = threading.Thread(target=engine.start_weight_update)
    starter.start()
    time.sleep(0.2)
    assert "start_weight_update" not in llm.names()  # waits for the request in flight
    engine._loop.call_soon_threadsafe(llm.gate.set)
    first.join(5)
    starter.join(5)
    assert llm.names() == ["generate", "pause_generation", "generate_done", "start_weight_update"]
    second = threading.Thread(target=engine.generate, args=(REQUEST,))
    second.start()
    time.sleep(0.2)
    assert llm.names()[-1] == "start_weight_update"  # no generation while the update is open
    engine.update_weights_nccl(UPDATE_INFO)
    engine.finish_weight_update()
    second.join(5)
    assert llm.names()[4:] == [
        "update_weights", "finish_weight_update", "reset_prefix_cache", "resume_generation", "generate",
        "generate_done",
    ]  # fmt: skip
    engine.close()


def test_agent_server_forwards_nccl_weight_updates_to_the_vllm_engine(fake_vllm, tok):
    import requests

    from deep_math.vllm_serve_agent import AgentServer, AgentService, ServerConfig

    engine = make_engine(tok, tensor_parallel_size=2)
    llm = fake_vllm[0]
    service = AgentService(
        ServerConfig(engine="vllm", model="org/model"), engine=engine, sandbox=types.SimpleNamespace()
    )
    server = AgentServer(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        info = requests.get(f"{url}/server_info", timeout=10).json()
        assert info["vllm_config"]["weight_transfer_config"] == {"backend": "nccl"}
        assert info["vllm_config"]["model_config"]["logprobs_mode"] == "raw_logprobs"
        assert requests.get(f"{url}/get_world_size", timeout=10).json() == {"world_size": 2}

        def post(path, **kwargs):
            response = requests.post(f"{url}{path}", timeout=10, **kwargs)
            assert response.status_code == 200, (path, response.status_code, response.text)
            return response.json()

        post("/init_weight_transfer_engine", json={"init_info": INIT_INFO})
        post("/start_weight_update", json={})
        post("/update_weights", json={"update_info": UPDATE_INFO})
        assert post("/finish_weight_update", json={})["version"] == 1
        assert llm.names() == [
            "init_weight_transfer_engine", "pause_generation", "start_weight_update", "update_weights",
            "finish_weight_update", "reset_prefix_cache", "resume_generation",
        ]  # fmt: skip
        post("/start_weight_update", json={})
        post("/abort_weight_update", json={})
        response = requests.post(
            f"{url}/v1/completions", json={"prompt": [[1, 2]], "max_tokens": 2}, timeout=10
        )
        assert response.status_code == 500 and "last weight update was aborted" in response.json()["error"]
        assert requests.get(f"{url}/weights_hash", timeout=10).json() == {"hash": "worker-hash", "version": 1}
    finally:
        server.shutdown()
        server.server_close()
        service.close()


def test_a_plain_exception_from_the_engine_is_an_http_500_with_its_message(tok):
    """vLLM's engine core reports worker failures to the caller as a plain `Exception`."""
    import requests

    from deep_math.vllm_serve_agent import AgentServer, AgentService, ServerConfig

    class Broken:
        name, tokenizer = "broken", tok

        def generate(self, requests):
            raise Exception("EngineCore encountered an issue")  # noqa: TRY002 - what vLLM raises

        def close(self):
            pass

    service = AgentService(ServerConfig(engine="scripted"), engine=Broken(), sandbox=types.SimpleNamespace())
    server = AgentServer(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/completions"
        response = requests.post(url, json={"prompt": [[1, 2]], "max_tokens": 2}, timeout=10)
        assert response.status_code == 500 and "EngineCore encountered an issue" in response.json()["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_map_finish_reason_table():
    assert map_finish_reason("length", None) == "length"
    assert map_finish_reason("stop", "</tool_call>") == "stop"
    assert map_finish_reason("stop", None) == "eos"
    assert map_finish_reason("stop", 128001) == "eos"  # a stop token id
    with pytest.raises(EngineError, match="unexpected finish_reason"):
        map_finish_reason("abort", None)


@pytest.mark.gpu
def test_vllm_gpu_stop_string_tokens():
    """On a real GPU: token ids of a stop-string stop contain the stop string; logprobs align."""
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from deep_math.engines.stops import decode
    from deep_math.engines.vllm import VLLMEngine

    engine = VLLMEngine(gpu_memory_utilization=0.3, max_model_len=2048, enforce_eager=True)
    tok = engine.tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
        add_generation_prompt=True,
        return_dict=False,
    )
    [free] = engine.generate([GenRequest(prompt, SamplingParams(temperature=0, max_tokens=40))])
    stop = "5"
    assert stop in free.text, free.text
    [cut] = engine.generate([GenRequest(prompt, SamplingParams(temperature=0, max_tokens=40, stop=[stop]))])
    assert cut.finish_reason == "stop" and cut.stop_string == stop
    assert stop in decode(tok, cut.token_ids)
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)]
    assert len(cut.logprobs) == len(cut.token_ids)
    engine.close()


def test_reset_prefix_cache_route_calls_the_engine_or_says_it_has_none():
    from deep_math.serving.service import HTTPError
    from deep_math.vllm_serve_agent import AgentService, ServerConfig

    class Plain:
        name, tokenizer = "plain", None

        def generate(self, requests):
            return []

        def close(self):
            pass

    class Cached(Plain):
        resets = 0

        def reset_prefix_cache(self):
            self.resets += 1
            return True

    cached = Cached()
    service = AgentService(ServerConfig(engine="scripted"), engine=cached, sandbox=types.SimpleNamespace())
    assert service.reset_prefix_cache() == {"success": True} and cached.resets == 1
    service = AgentService(ServerConfig(engine="scripted"), engine=Plain(), sandbox=types.SimpleNamespace())
    with pytest.raises(HTTPError, match="no prefix cache to reset") as info:
        service.reset_prefix_cache()
    assert info.value.status == 501


def test_weights_hash_sees_linear_weights_that_vllm_cpu_prepacked_and_emptied():
    """vLLM's CPU backend keeps a linear layer's weights only inside its packed kernel
    (`layer.cpu_linear`) and leaves `weight` empty; the hash must still change when they do."""
    import torch

    from deep_math.engines.vllm.worker import served_tensors
    from deep_math.engines.weights import tensors_hash

    def packed_layer(w: torch.Tensor) -> torch.nn.Module:
        layer = torch.nn.Module()
        layer.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        layer.input_size_per_partition = w.shape[1]
        layer.cpu_linear = lambda x, weight, bias: x @ w.t()  # as vLLM's closure over the packed copy
        return layer

    def model(w: torch.Tensor) -> torch.nn.Module:
        m = torch.nn.Module()
        m.norm = torch.nn.LayerNorm(4)
        m.down_proj = packed_layer(w)
        return m

    w = torch.randn(3, 4)
    assert tensors_hash(served_tensors(model(w))) == tensors_hash(served_tensors(model(w.clone())))
    assert tensors_hash(served_tensors(model(w))) != tensors_hash(served_tensors(model(w * 0.5)))
