"""A real-model smoke run: the embedded SmolLM2 through engine, agent, sandbox and inference."""

from __future__ import annotations

import json

from deep_math.agent.config import AgentConfig
from deep_math.inference.config import GenerationConfig, InferenceConfig, ModelConfig
from deep_math.inference.run import run_inference


def test_inference_on_embedded_model_writes_consistent_records(tmp_path):
    out = tmp_path / "smoke.jsonl"
    cfg = InferenceConfig(
        limit=2,
        generated_file=str(out),
        progress=False,
        agent=AgentConfig(max_agent_output=48, max_steps=2),
        model=ModelConfig(
            math_agent=True,
            sampling=2,
            device="cpu",
            generation=GenerationConfig(temperature=0.7, max_new_tokens=32, seed=0),
        ),
    )
    summary = run_inference(cfg)
    assert summary.samples == 4 and summary.errors == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for rec in records:
        assert rec["meta"]["model"].startswith("embedded:") and rec["meta"]["agent"] is True
        for sample, text in zip(rec["samples"], rec["text"], strict=True):
            assert sample["text"] == text
            assert 0 < sample["model_tokens"] + sample["tool_tokens"] <= 48
            assert sample["finish_reason"] in {"answer", "eos", "max_steps", "budget"}
    # rerun: everything is already there, nothing is generated or duplicated
    again = run_inference(cfg)
    assert again.samples == 0 and again.skipped == 2
    assert len(out.read_text().splitlines()) == 2
