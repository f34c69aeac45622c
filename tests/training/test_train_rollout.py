"""rollout_func contract: shapes, masks, logprob alignment, truncation, failed traces."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deep_math.agent.config import AgentConfig
from deep_math.agent.trace import Trace
from deep_math.engines.scripted import ScriptedEngine
from deep_math.training.rollout import AgentRollout, RolloutSettings, traces_to_rollout
from deep_math.training.sources import RunnerTraceSource

CALL = "<tool_call>\n{code}\n</tool_call>"


def fake_trainer(temperature=1.0, step=0):
    return SimpleNamespace(temperature=temperature, state=SimpleNamespace(global_step=step), metrics={})


def test_traces_to_rollout_truncates_consistently():
    trace = Trace(
        prompt_ids=[1, 2],
        completion_ids=[10, 11, 12, 13, 14, 15],
        logprobs=[-0.1, -0.2, 0.0, 0.0, -0.5, -0.6],
        env_mask=[1, 1, 0, 0, 1, 1],
        finish_reason="answer",
        tool_calls=1,
    )
    out = traces_to_rollout([trace], max_completion_length=4, pad_token_id=0)
    assert out["completion_ids"] == [[10, 11, 12, 13]]
    assert out["logprobs"] == [[-0.1, -0.2, 0.0, 0.0]]
    assert out["env_mask"] == [[1, 1, 0, 0]]
    assert out["finish_reason"] == ["budget"]
    assert out["prompt_ids"] == [[1, 2]] and out["tool_calls"] == [1] and out["trace_error"] == [None]


def test_failed_trace_is_masked_and_flagged_not_filled_with_fake_tokens():
    failed = Trace(prompt_ids=[1], finish_reason="error", error="EngineError: boom")
    partial = Trace(
        prompt_ids=[1],
        completion_ids=[5, 6],
        logprobs=[-1.0, -1.0],
        env_mask=[1, 1],
        finish_reason="error",
        error="sandbox: died",
    )
    out = traces_to_rollout([failed, partial], max_completion_length=8, pad_token_id=7)
    assert out["completion_ids"] == [[7], [5, 6]]
    assert out["env_mask"] == [[0], [0, 0]]  # nothing of a failed trace is trained on
    assert out["trace_error"] == ["EngineError: boom", "sandbox: died"]


def test_misaligned_trace_is_refused():
    bad = Trace(prompt_ids=[1], completion_ids=[5, 6], logprobs=[-1.0], env_mask=[1, 1])
    with pytest.raises(ValueError, match="aligned"):
        traces_to_rollout([bad], 8, 0)


def test_rollout_func_runs_agent_traces_with_trainer_temperature(tokenizer):
    script = [
        "Let me compute. " + CALL.format(code="print(6*7)"),
        " So \\boxed{42}.<|im_end|>",
        "It is \\boxed{41}.<|im_end|>",
    ]
    engine = ScriptedEngine(
        tokenizer, lambda req, i: script[min(i, 2)] if len(req.prompt_ids) < 10_000 else ""
    )
    source = RunnerTraceSource(engine, AgentConfig(max_steps=2, max_agent_output=200, max_concurrency=1))
    rollout = AgentRollout(source, tokenizer, RolloutSettings(max_completion_length=200, top_p=0.8, top_k=50))
    try:
        out = rollout(["What is 6*7?", "What is 6*7?"], fake_trainer(temperature=0.9))
    finally:
        rollout.close()
    assert len(out["prompt_ids"]) == len(out["completion_ids"]) == 2
    assert out["prompt_ids"][0] == out["prompt_ids"][1]
    assert tokenizer.decode(out["prompt_ids"][0]).rstrip().endswith("assistant")
    for ids, lps, mask in zip(out["completion_ids"], out["logprobs"], out["env_mask"], strict=True):
        assert len(ids) == len(lps) == len(mask)
        assert all(lp == 0.0 for lp, m in zip(lps, mask, strict=True) if m == 0)  # observations
        assert all(lp < 0.0 for lp, m in zip(lps, mask, strict=True) if m == 1)  # engine logprobs
    first = out["completion_ids"][0]
    obs = [t for t, m in zip(first, out["env_mask"][0], strict=True) if m == 0]
    assert tokenizer.decode(obs) == "\n```output\n42\n```\n"
    assert out["tool_calls"][0] == 1 and out["tool_errors"][0] == 0
    assert {r.sampling.temperature for r in engine.requests} == {0.9}
    assert {(r.sampling.top_p, r.sampling.top_k) for r in engine.requests} == {(0.8, 50)}


def test_rollout_passes_the_trace_text_and_tool_output_spans_to_the_rewards():
    trace = Trace(prompt_ids=[1], completion_ids=[5, 6, 7], logprobs=[0.0] * 3, env_mask=[1, 0, 1])
    trace.text, trace.tool_output_spans = "a```output\nb\n```c", [(1, 16)]
    out = traces_to_rollout([trace], max_completion_length=10, pad_token_id=0)
    assert out["trace_text"] == [trace.text] and out["tool_output_spans"] == [[[1, 16]]]
    cut = traces_to_rollout([trace], max_completion_length=2, pad_token_id=0)
    assert cut["trace_text"] == [None] and cut["tool_output_spans"] == [None]  # reward reads the completion


def test_seeded_rollouts_never_reuse_a_stream_across_optimizer_steps_and_agent_calls(tokenizer):
    from deep_math.agent.model import EngineModel

    rollout = AgentRollout(source=None, tokenizer=tokenizer, settings=RolloutSettings(seed=7))
    engine = ScriptedEngine(tokenizer, lambda req, i: "x")
    for step in range(3):
        for params in rollout.sampling(fake_trainer(step=step), 3):
            model = EngineModel(engine, params)
            for call in range(3):  # a trace's generation calls
                model.generate_ids([1], max_tokens=1, stop=[], step=call)
    seeds = [r.sampling.seed for r in engine.requests]
    assert len(seeds) == 27 and len(set(seeds)) == 27


def test_derive_seed_is_deterministic_and_separates_paths():
    from deep_math.seeds import derive_seed

    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2)
    seeds = {
        derive_seed(b, kind, i, j)
        for b in (0, 1)
        for kind in ("call", "sandbox")
        for i in range(5)
        for j in range(5)
    }
    assert len(seeds) == 100 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, 1) != derive_seed(1, "1")


def test_a_trace_without_known_spans_leaves_the_reward_to_parse_the_completion():
    trace = Trace(prompt_ids=[1], completion_ids=[5], logprobs=[0.0], env_mask=[1], text="a")
    assert trace.tool_output_spans is None  # e.g. from an older agent server
    out = traces_to_rollout([trace], max_completion_length=10, pad_token_id=0)
    assert out["trace_text"] == [None] and out["tool_output_spans"] == [None]
