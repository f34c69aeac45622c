"""The agent server as a real process (transformers engine, tiny model) and its TRL-based client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests
import torch

from deep_math.engines.base import SamplingParams
from deep_math.testing import REPO, tiny_model_dir
from deep_math.vllm_client import AgentVLLMClient, HandshakeError, ServerError

MAX_STEPS, MAX_AGENT_OUTPUT = 2, 48

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_dir(tokenizer, tmp_path_factory):
    return tiny_model_dir(tokenizer, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "deep_math.vllm_serve_agent",
        "--model",
        str(tiny_dir),
        "--engine",
        "transformers",
        "--device",
        "cpu",
        "--max_steps",
        str(MAX_STEPS),
        "--max_agent_output",
        str(MAX_AGENT_OUTPUT),
        "--sandbox_timeout",
        "5",
        "--max_concurrency",
        "8",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        else:
            pytest.fail(f"server did not come up:\n{log_path.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(server):
    c = AgentVLLMClient(base_url=server, connection_timeout=10, request_timeout=120)
    yield c
    c.close()


def test_handshake_accepts_matching_settings_and_refuses_others(client):
    config = client.check_compatible(max_steps=MAX_STEPS, max_agent_output=MAX_AGENT_OUTPUT)
    assert config["engine"] == "transformers"
    with pytest.raises(HandshakeError, match=r"max_steps: server 2 vs trainer 50.*--max_steps 50"):
        client.check_compatible(max_steps=50, max_agent_output=MAX_AGENT_OUTPUT)


def test_agent_generate_returns_aligned_traces(client, tokenizer):
    prompt = tokenizer.encode("What is 6*7?")
    traces = client.generate_agent(
        [prompt, prompt], SamplingParams(temperature=1.0, max_tokens=MAX_AGENT_OUTPUT, seed=3)
    )
    assert len(traces) == 2
    for t in traces:
        assert t.prompt_ids == prompt
        assert 0 < len(t.completion_ids) <= MAX_AGENT_OUTPUT
        assert len(t.completion_ids) == len(t.logprobs) == len(t.env_mask)
        assert t.finish_reason != "error", t.error


def test_vllm_compatible_completions_through_trl_generate(client, tokenizer):
    prompt = tokenizer.encode("Hello")
    out = client.generate([prompt], n=2, temperature=0.0, max_tokens=5, logprobs=0)
    assert out["prompt_ids"] == [prompt]
    assert len(out["completion_ids"]) == 2 and out["completion_ids"][0] == out["completion_ids"][1]  # greedy
    assert [len(x) for x in out["logprobs"][0]] == [1] * len(out["completion_ids"][0])


def test_server_errors_come_back_as_errors(client, server):
    with pytest.raises(ServerError) as info:
        client._post(f"{server}/agent/generate", json={"prompt_ids": [], "sampling": {}})
    assert info.value.status == 400 and "prompt_ids" in info.value.message
    with pytest.raises(ServerError) as info:
        client._post(f"{server}/v1/completions", json={"prompt": [[1, 2]], "lora_path": "/no/such/adapter"})
    assert info.value.status == 500 and "lora_path" in info.value.message
    # inside an agent trace the same failure is that trace's typed error, with no made-up tokens
    (trace,) = client.generate_agent([[1, 2]], SamplingParams(), lora_path="/no/such/adapter")
    assert trace.finish_reason == "error" and "lora_path" in trace.error
    assert trace.completion_ids == []


def test_weight_update_changes_the_served_weights(client, tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from deep_math.vllm_serve_agent import state_dict_hash

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    before = client.weights_hash()
    assert before["hash"] == state_dict_hash(model)
    prompt = tokenizer.encode("What is 6*7?")
    greedy_before = client.generate([prompt], temperature=0.0, max_tokens=8)["completion_ids"][0]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    version = client.push_weights(lambda: model.named_parameters(), chunk_bytes=1 << 20)  # several chunks
    after = client.weights_hash()
    assert version == after["version"] == before["version"] + 1
    assert after["hash"] == state_dict_hash(model) != before["hash"]
    greedy_after = client.generate([prompt], temperature=0.0, max_tokens=8)["completion_ids"][0]
    assert greedy_after != greedy_before


def test_two_step_grpo_through_the_server_syncs_weights(server, client, tiny_dir, tmp_path, monkeypatch):
    import copy

    from deep_math.data import Problem
    from deep_math.testing import distinct_chars
    from deep_math.training import rewards
    from deep_math.training.builders import build_trainer, load_policy
    from deep_math.training.tiny import tiny_config
    from deep_math.vllm_serve_agent import state_dict_hash

    monkeypatch.setitem(rewards.REWARDS, "distinct_chars", distinct_chars)
    cfg = tiny_config(
        tiny_dir,
        tmp_path / "out",
        rewards={"distinct_chars": 1.0},
        **{"rollout.backend": "server", "rollout.server_url": server, "rollout.server_timeout": 10.0},
    )
    model, tok = load_policy(cfg)
    trainer = build_trainer(cfg, [Problem("p1", "What is 6*7?", "42")], model=model, tokenizer=tok)
    source = trainer.deep_math_rollout.source
    start = client.weights_hash()
    try:
        trainer.train()
        assert source.transport == "http"
        served = client.weights_hash()
        assert served["version"] == start["version"] + 2  # pushed before the rollouts of steps 0 and 1
        assert served["hash"] != start["hash"]
        source._sync(trainer)  # global_step is 2 now: push the final policy, as step 2 would
        merged = copy.deepcopy(trainer.model).merge_and_unload()
        assert client.weights_hash()["hash"] == state_dict_hash(merged)  # exactly the trained weights
    finally:
        trainer.deep_math_rollout.close()


def test_trainer_refuses_a_mismatched_server(server, tiny_dir, tmp_path):
    from deep_math.training.builders import build_trace_source
    from deep_math.training.tiny import tiny_config

    cfg = tiny_config(
        tiny_dir,
        tmp_path / "out",
        **{"rollout.backend": "server", "rollout.server_url": server, "agent.max_steps": 5},
    )
    with pytest.raises(HandshakeError, match="max_steps: server 2 vs trainer 5"):
        build_trace_source(cfg, tokenizer=None)


def test_engine_server_inference_can_use_this_server(server, tokenizer):
    from deep_math.engines import build_engine
    from deep_math.engines.base import GenRequest

    engine = build_engine("server", base_url=server, tokenizer=tokenizer, timeout=60)
    try:
        prompt = tokenizer.encode("Hello")
        (eos,) = engine.generate([GenRequest(prompt, SamplingParams(temperature=0.0, max_tokens=6))])
        assert len(eos.token_ids) == len(eos.logprobs) <= 6 and eos.finish_reason in ("length", "eos", "stop")
        other = engine.generate([GenRequest(prompt, SamplingParams(temperature=0.0, max_tokens=6))])[0]
        assert other.token_ids == eos.token_ids  # greedy is reproducible through the server
    finally:
        engine.close()
