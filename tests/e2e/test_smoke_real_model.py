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


def test_the_readme_quickstart_calls_the_tool_and_boxes_a_correct_answer(tmp_path):
    """The README's first command (its inference part, as written) on the embedded default: the
    shipped adapter makes the 135M model call the tool and box at least one right answer."""
    import re
    import shlex
    import subprocess
    import sys

    from deep_math.evaluation.extract import extract_answer
    from deep_math.evaluation.grading import is_correct
    from deep_math.testing import REPO

    readme = (REPO / "README.md").read_text()
    first = readme.split("<!-- fresh-machine -->", 1)[1].split("```", 2)[1].strip().splitlines()[0]
    command = shlex.split(first.split("&& python ", 1)[1])  # after the install steps
    assert command[0] == "inference.py"
    out = tmp_path / "quickstart.jsonl"
    command = [a for a in command if not a.startswith("generated_file=")] + [f"generated_file={out}"]
    done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = re.search(r"(\d+) tool calls, (\d+) boxed answers", done.stdout)
    assert summary and int(summary[1]) > 0, done.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(s["tool_calls"] > 0 for r in records for s in r["samples"])
    correct = [is_correct(extract_answer(s["text"]), r["target"]) for r in records for s in r["samples"]]
    assert any(correct), [s["text"] for r in records for s in r["samples"]]
