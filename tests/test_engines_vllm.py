"""VLLMEngine against a fake `vllm` module that checks the exact calls (CPU), plus a GPU test.

The weight-update tests check that each hook calls the `LLM` methods vLLM's own RLHF routes end in
(see deep_math/engines/vllm_engine.py's docstring for the vLLM source they follow); the fake only
records the calls, so nothing here shows that a real vLLM accepts them."""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from deep_math.engines.base import EngineError, GenRequest, SamplingParams
from deep_math.engines.vllm_engine import WORKER_EXTENSION, map_finish_reason
from deep_math.models import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@dataclass
class FakeLogprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FakeCompletion:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, FakeLogprob]] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass
class FakeRequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion]


class FakeSamplingParams:
    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class FakeLLM:
    """Records constructor kwargs and generate calls; replies with a scripted completion per prompt:
    `replies[i % len(replies)]` is (token_ids, finish_reason, stop_reason)."""

    kwargs: dict[str, Any]
    calls: list[dict[str, Any]] = field(default_factory=list)
    replies: list[tuple[list[int], str, int | str | None]] = field(default_factory=list)
    # every call in order, as (method, argument): generate and the weight-update API of vLLM's LLM
    events: list[tuple[str, Any]] = field(default_factory=list)
    gate: threading.Event | None = None  # when set by a test, generate waits for it
    worker_hashes: list[str] = field(default_factory=lambda: ["worker-hash"])

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        assert isinstance(prompts, list) and isinstance(sampling_params, list)
        assert len(prompts) == len(sampling_params)
        self.events.append(("generate", len(prompts)))
        if self.gate is not None:
            assert self.gate.wait(10)
        self.events.append(("generate_done", len(prompts)))
        self.calls.append(
            {"prompts": prompts, "params": sampling_params, "lora": lora_request, "tqdm": use_tqdm}
        )
        outs = []
        for i, prompt in enumerate(prompts):
            ids, finish, stop = self.replies[i % len(self.replies)]
            logprobs = [{t: FakeLogprob(-0.5 - j)} for j, t in enumerate(ids)]
            completion = FakeCompletion(0, "vllm text", list(ids), None, logprobs, finish, stop)
            outs.append(FakeRequestOutput(str(i), prompt["prompt_token_ids"], [completion]))
        return outs

    # vLLM's LLM weight-update methods (vllm/entrypoints/llm.py, rl/offline.py): same signatures
    def init_weight_transfer_engine(self, request):
        self.events.append(("init_weight_transfer_engine", request))

    def start_weight_update(self):
        self.events.append(("start_weight_update", None))

    def update_weights(self, request):
        self.events.append(("update_weights", request))

    def finish_weight_update(self, weight_version=None):
        self.events.append(("finish_weight_update", weight_version))

    def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False):
        self.events.append(("reset_prefix_cache", None))
        return True

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        assert isinstance(method, str) and timeout is None and args == ()
        if method == "deep_math_load_safetensors":
            from safetensors.torch import load

            assert set(kwargs) == {"payload"} and isinstance(kwargs["payload"], bytes)
            tensors = load(kwargs["payload"])
            self.events.append((method, {n: t.tolist() for n, t in tensors.items()}))
            return [len(tensors)]
        assert method == "deep_math_weights_hash" and kwargs is None
        self.events.append((method, None))
        return list(self.worker_hashes)

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@dataclass
class FakeWeightTransferConfig:
    backend: str = "nccl"


@pytest.fixture
def fake_vllm(monkeypatch):
    """Installs a fake `vllm` package in sys.modules; yields the list of LLM instances made."""
    made: list[FakeLLM] = []
    vllm = types.ModuleType("vllm")

    def llm_factory(**kwargs: Any) -> FakeLLM:
        llm = FakeLLM(kwargs)
        made.append(llm)
        return llm

    vllm.LLM = llm_factory
    vllm.SamplingParams = FakeSamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda **kw: dict(kw)  # a TypedDict in vLLM: calling it makes a dict
    lora = types.ModuleType("vllm.lora")
    lora_request = types.ModuleType("vllm.lora.request")
    lora_request.LoRARequest = FakeLoRARequest
    config = types.ModuleType("vllm.config")
    config.WeightTransferConfig = FakeWeightTransferConfig
    for name, module in {
        "vllm": vllm,
        "vllm.config": config,
        "vllm.inputs": inputs,
        "vllm.lora": lora,
        "vllm.lora.request": lora_request,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return made


def make_engine(tok, **kwargs):
    from deep_math.engines import build_engine

    return build_engine("vllm", model_name_or_path="org/model", tokenizer=tok, **kwargs)


def test_constructor_kwargs(fake_vllm, tok):
    engine = make_engine(tok, tensor_parallel_size=2, max_model_len=4096, enforce_eager=True)
    assert fake_vllm[0].kwargs == {
        "model": "org/model",
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.9,
        "seed": 0,
        "max_model_len": 4096,
        "enforce_eager": True,
        "weight_transfer_config": FakeWeightTransferConfig(backend="nccl"),
        "worker_extension_cls": "deep_math.engines.vllm_engine.DeepMathWorkerExtension",
    }
    assert engine.world_size == 2
    engine.close()
    engine = make_engine(tok, lora_path="/adapters/a", data_parallel_size=2, weight_transfer_backend=None)
    assert fake_vllm[1].kwargs["enable_lora"] is True
    assert fake_vllm[1].kwargs["max_lora_rank"] == 32
    assert fake_vllm[1].kwargs["data_parallel_size"] == 2
    assert "weight_transfer_config" not in fake_vllm[1].kwargs
    engine.close()
    assert "DeepMathWorkerExtension" in WORKER_EXTENSION
    from deep_math.engines.vllm_engine import DeepMathWorkerExtension

    assert hasattr(DeepMathWorkerExtension, "deep_math_load_safetensors")  # the names called below
    assert hasattr(DeepMathWorkerExtension, "deep_math_weights_hash")


def test_generate_calls_and_result_mapping(fake_vllm, tok):
    engine = make_engine(tok)
    stop_ids = tok("x = 2</tool_call>", add_special_tokens=False)["input_ids"]
    fake_vllm[0].replies = [
        (stop_ids, "stop", "</tool_call>"),
        ([42, 43, tok.eos_token_id], "stop", None),
        ([7, 8, 9], "length", None),
    ]
    requests = [
        GenRequest(
            [1, 2, 3],
            SamplingParams(
                temperature=0.7, top_p=0.9, top_k=20, max_tokens=50, stop=["</tool_call>"], seed=5
            ),
        ),
        GenRequest([4, 5], SamplingParams(temperature=0, max_tokens=10)),
        GenRequest([6], SamplingParams(max_tokens=3)),
    ]
    stop, eos, length = engine.generate(requests)
    [call] = fake_vllm[0].calls
    assert call["prompts"] == [
        {"prompt_token_ids": [1, 2, 3]},
        {"prompt_token_ids": [4, 5]},
        {"prompt_token_ids": [6]},
    ]
    assert call["lora"] is None and call["tqdm"] is False
    assert call["params"][0].kwargs == {
        "n": 1,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "max_tokens": 50,
        "stop": ["</tool_call>"],
        "include_stop_str_in_output": True,
        "logprobs": 0,
        "seed": 5,
    }
    assert call["params"][1].kwargs["top_k"] == -1 and call["params"][1].kwargs["seed"] is None

    assert (stop.finish_reason, stop.stop_string, stop.token_ids) == ("stop", "</tool_call>", stop_ids)
    assert stop.text == "x = 2</tool_call>"  # decoded from the ids, not vLLM's text
    assert stop.logprobs == [-0.5 - j for j in range(len(stop_ids))]
    assert (eos.finish_reason, eos.token_ids[-1]) == ("eos", tok.eos_token_id)
    assert tok.eos_token not in eos.text
    assert (length.finish_reason, length.token_ids) == ("length", [7, 8, 9])
    engine.close()


def test_lora_requests_per_request_and_default(fake_vllm, tok):
    engine = make_engine(tok, lora_path="/adapters/default")
    fake_vllm[0].replies = [([5], "length", None)]
    engine.generate(
        [
            GenRequest([1], SamplingParams(max_tokens=1)),
            GenRequest([2], SamplingParams(max_tokens=1), lora_path="/adapters/b"),
        ]
    )
    engine.generate([GenRequest([3], SamplingParams(max_tokens=1), lora_path="/adapters/b")])
    first, second = fake_vllm[0].calls
    default, b = first["lora"]
    assert default.lora_path == "/adapters/default" and b.lora_path == "/adapters/b"
    assert default.lora_int_id != b.lora_int_id
    assert second["lora"][0] == b  # same path -> same id and name
    engine.close()


def test_lora_without_enable_lora_fails(fake_vllm, tok):
    engine = make_engine(tok)
    with pytest.raises(EngineError, match="enable_lora=False"):
        engine.generate([GenRequest([1], SamplingParams(max_tokens=1), lora_path="/adapters/x")])
    engine.close()


def test_concurrent_callers_share_one_llm_call(fake_vllm, tok):
    engine = make_engine(tok, batch_wait_ms=300)
    fake_vllm[0].replies = [([5, 6], "length", None)]
    threads = [
        threading.Thread(target=engine.generate, args=([GenRequest([i + 1], SamplingParams(max_tokens=2))],))
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(c["prompts"]) for c in fake_vllm[0].calls) == 6
    assert len(fake_vllm[0].calls) <= 2
    engine.close()


def test_bad_outputs_become_engine_errors(fake_vllm, tok):
    engine = make_engine(tok)
    fake_vllm[0].replies = [([5, 6], "abort", None)]
    with pytest.raises(EngineError, match="unexpected finish_reason"):
        engine.generate([GenRequest([1], SamplingParams(max_tokens=2))])
    engine.close()


def test_map_finish_reason_table():
    assert map_finish_reason("stop", "</tool_call>") == "stop"
    assert map_finish_reason("stop", None) == "eos"
    assert map_finish_reason("stop", 151645) == "eos"
    assert map_finish_reason("length", None) == "length"


# --- weight updates ------------------------------------------------------------------------

INIT_INFO = {
    "master_address": "10.0.0.1",
    "master_port": 51216,
    "rank_offset": 1,
    "world_size": 2,
    "packed": True,
}
UPDATE_INFO = {"names": ["model.norm.weight"], "dtype_names": ["bfloat16"], "shapes": [[8]]}


def test_nccl_hooks_call_vllms_llm_weight_transfer_api(fake_vllm, tok):
    engine = make_engine(tok)
    llm = fake_vllm[0]
    engine.init_weight_transfer(INIT_INFO)
    engine.start_weight_update()
    engine.update_weights_nccl(UPDATE_INFO)
    engine.update_weights_nccl(UPDATE_INFO)  # chunked transfers: several per update
    engine.finish_weight_update()
    assert llm.events == [
        ("init_weight_transfer_engine", {"init_info": INIT_INFO}),
        ("start_weight_update", None),
        ("update_weights", {"update_info": UPDATE_INFO}),
        ("update_weights", {"update_info": UPDATE_INFO}),
        ("finish_weight_update", None),
        ("reset_prefix_cache", None),
    ]
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
    assert fake_vllm[0].names() == ["start_weight_update", "finish_weight_update", "reset_prefix_cache"]
    engine.close()


def test_http_update_weights_loads_safetensors_through_the_worker_extension(fake_vllm, tok):
    import torch

    engine = make_engine(tok)
    llm = fake_vllm[0]
    tensors = {
        "base_model.model.model.norm.weight": torch.tensor([1.0, 2.0]),
        "lm_head.weight": torch.tensor([[3.0]], dtype=torch.bfloat16),
    }
    engine.update_weights(tensors)  # no update open: runs a whole one
    assert llm.events == [
        ("start_weight_update", None),
        ("deep_math_load_safetensors", {"model.norm.weight": [1.0, 2.0], "lm_head.weight": [[3.0]]}),
        ("finish_weight_update", None),
        ("reset_prefix_cache", None),
    ]
    llm.events.clear()
    engine.start_weight_update()  # as the server does: start, then update_weights + finish
    engine.update_weights({"model.norm.weight": torch.tensor([5.0, 6.0])})
    engine.finish_weight_update()
    assert llm.names() == [
        "start_weight_update",
        "deep_math_load_safetensors",
        "finish_weight_update",
        "reset_prefix_cache",
    ]
    engine.close()


def test_failed_http_load_aborts_the_update(fake_vllm, tok, monkeypatch):
    import torch

    engine = make_engine(tok)
    llm = fake_vllm[0]

    def broken(method, timeout=None, args=(), kwargs=None):
        raise KeyError("no such parameter")

    monkeypatch.setattr(llm, "collective_rpc", broken)
    engine.start_weight_update()
    with pytest.raises(KeyError):
        engine.update_weights({"nope": torch.zeros(1)})
    assert not engine._update_open and not engine._model_lock.locked()
    assert llm.names() == ["start_weight_update", "finish_weight_update", "reset_prefix_cache"]
    engine.close()


def test_weights_hash_combines_worker_hashes(fake_vllm, tok):
    import hashlib

    engine = make_engine(tok)
    assert engine.weights_hash() == "worker-hash"
    fake_vllm[0].worker_hashes = ["a", "b"]  # tensor parallel: one hash per worker
    assert engine.weights_hash() == hashlib.sha256(b"ab").hexdigest()
    engine.start_weight_update()
    with pytest.raises(RuntimeError, match="while a weight update is open"):
        engine.weights_hash()
    engine.finish_weight_update()
    engine.close()


def _wait_for(predicate, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_update_waits_for_the_batch_in_flight_and_blocks_generation_until_finish(fake_vllm, tok):
    import time

    engine = make_engine(tok, batch_wait_ms=0)
    llm = fake_vllm[0]
    llm.replies = [([5], "length", None)]
    llm.gate = threading.Event()
    request = [GenRequest([1], SamplingParams(max_tokens=1))]
    first = threading.Thread(target=engine.generate, args=(request,))
    first.start()
    _wait_for(lambda: llm.names() == ["generate"])  # a batch is inside llm.generate
    starter = threading.Thread(target=engine.start_weight_update)
    starter.start()
    time.sleep(0.2)
    assert llm.names() == ["generate"]  # start waits for the batch
    llm.gate.set()
    first.join(5)
    starter.join(5)
    assert llm.names() == ["generate", "generate_done", "start_weight_update"]

    second = threading.Thread(target=engine.generate, args=(request,))
    second.start()
    time.sleep(0.2)
    assert llm.names()[-1] == "start_weight_update"  # no generation while the update is open
    engine.update_weights_nccl(UPDATE_INFO)
    engine.finish_weight_update()
    second.join(5)
    assert llm.names()[3:] == [
        "update_weights",
        "finish_weight_update",
        "reset_prefix_cache",
        "generate",
        "generate_done",
    ]
    engine.close()


def test_agent_server_forwards_weight_updates_to_the_vllm_engine(fake_vllm, tok):
    """The server (in-process, engine injected) no longer answers 501 for --engine vllm."""
    import requests
    import torch
    from safetensors.torch import save

    from deep_math.vllm_serve_agent import AgentServer, AgentService, ServerConfig

    engine = make_engine(tok, tensor_parallel_size=2)
    llm = fake_vllm[0]
    service = AgentService(
        ServerConfig(engine="vllm", model="org/model"), engine=engine, sandbox=types.SimpleNamespace()
    )
    server = AgentServer(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        info = requests.get(f"{url}/server_info", timeout=10).json()
        assert info["vllm_config"]["weight_transfer_config"] == {"backend": "nccl"}
        # TP workers count: the trainer joins the NCCL group as rank world_size
        assert requests.get(f"{url}/get_world_size", timeout=10).json() == {"world_size": 2}

        def post(path, **kwargs):
            response = requests.post(f"{url}{path}", timeout=10, **kwargs)
            assert response.status_code == 200, (path, response.status_code, response.text)
            return response.json()

        post("/init_weight_transfer_engine", json={"init_info": INIT_INFO})
        post("/start_weight_update", json={})
        post("/update_weights", json={"update_info": UPDATE_INFO})
        assert post("/finish_weight_update", json={})["version"] == 1
        assert llm.events == [
            ("init_weight_transfer_engine", {"init_info": INIT_INFO}),
            ("start_weight_update", None),
            ("update_weights", {"update_info": UPDATE_INFO}),
            ("finish_weight_update", None),
            ("reset_prefix_cache", None),
        ]

        llm.events.clear()
        post("/start_weight_update", json={})
        post("/update_weights_http", data=save({"model.norm.weight": torch.tensor([1.0])}))
        assert post("/finish_weight_update", json={})["version"] == 2
        assert llm.events[1] == ("deep_math_load_safetensors", {"model.norm.weight": [1.0]})

        post("/start_weight_update", json={})
        post("/abort_weight_update", json={})  # releases the engine's open update
        assert not engine._update_open and not engine._model_lock.locked()
        assert requests.get(f"{url}/weights_hash", timeout=10).json() == {"hash": "worker-hash", "version": 2}
    finally:
        server.shutdown()
        server.server_close()
        service.close()


@pytest.mark.gpu
def test_vllm_gpu_stop_string_tokens():
    """On a real GPU: token ids of a stop-string stop contain the stop string; logprobs align."""
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from deep_math.engines.stops import decode
    from deep_math.engines.vllm_engine import VLLMEngine

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
