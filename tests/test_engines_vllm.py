"""VLLMEngine against a fake `vllm` module that checks the exact calls (CPU), plus a GPU test."""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from deep_math.engines.base import EngineError, GenRequest, SamplingParams
from deep_math.engines.vllm_engine import map_finish_reason
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

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        assert isinstance(prompts, list) and isinstance(sampling_params, list)
        assert len(prompts) == len(sampling_params)
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
    for name, module in {
        "vllm": vllm,
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
    }
    engine.close()
    engine = make_engine(tok, lora_path="/adapters/a", data_parallel_size=2)
    assert fake_vllm[1].kwargs["enable_lora"] is True
    assert fake_vllm[1].kwargs["max_lora_rank"] == 32
    assert fake_vllm[1].kwargs["data_parallel_size"] == 2
    engine.close()


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
