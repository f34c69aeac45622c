"""inference.py: records, resume after kill -9, config errors, the paper's overrides."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deep_math.agent.config import AgentConfig
from deep_math.config_utils import ConfigError, to_schema
from deep_math.inference.config import LEGACY_KEYS, InferenceConfig
from deep_math.inference.records import GeneratedFile
from deep_math.testing import REPO

# A child process that runs inference on the bundled problems with a slow scripted engine.
CHILD = textwrap.dedent(
    """
    import sys, time
    from deep_math.engines.scripted import ScriptedEngine
    from deep_math.agent.config import AgentConfig
    from deep_math.inference.config import InferenceConfig, ModelConfig
    from deep_math.inference.run import run_inference
    from deep_math.models import load_tokenizer

    def script(req, i):
        time.sleep(0.15)
        return "Use code. <tool_call>\\nprint(2 + 2)\\n</tool_call>" if i % 2 == 0 else " so \\\\boxed{4}"

    engine = ScriptedEngine(load_tokenizer(None), script)
    cfg = InferenceConfig(generated_file=sys.argv[1], limit=int(sys.argv[2]), progress=False,
                          model=ModelConfig(math_agent=True, sampling=2), agent=AgentConfig(max_concurrency=1))
    print(run_inference(cfg, engine=engine).line(), flush=True)
    """
)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_after_kill_9_gives_exactly_n_records(tmp_path):
    out = tmp_path / "gen.jsonl"
    cmd = [sys.executable, "-c", CHILD, str(out), "8"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_records(out)
    assert 3 <= len(partial) < 8, "the kill should land midway"
    # simulate a write cut short by the kill: a truncated last line
    with open(out, "a") as fh:
        fh.write('{"id": "sample-0')
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"({len(partial)} already done)" in done.stdout
    records = read_records(out)
    ids = [r["id"] for r in records]
    assert len(records) == 8 and len(set(ids)) == 8
    assert records[: len(partial)] == partial  # earlier records untouched
    for r in records:
        assert len(r["samples"]) == 2 and len(r["text"]) == 2
        assert r["samples"][0]["tool_calls"] == 1 and r["samples"][0]["finish_reason"] == "answer"
        assert "```output\n4\n```" in r["text"][0]
        assert set(r["samples"][0]) >= {
            "text",
            "model_tokens",
            "tool_tokens",
            "tool_calls",
            "tool_errors",
            "tool_timeouts",
            "steps",
            "finish_reason",
        }
        assert r["meta"]["samples"] == 2 and r["meta"]["agent"] is True


def test_resume_refuses_a_file_made_with_other_settings(tmp_path):
    path = tmp_path / "g.jsonl"
    with GeneratedFile(path, {"model": "a", "samples": 1}) as f:
        f.write({"id": "1", "meta": {"model": "a", "samples": 1}})
    with pytest.raises(ValueError, match="other settings.*samples"):
        GeneratedFile(path, {"model": "a", "samples": 4})
    with GeneratedFile(path, {"model": "a", "samples": 4}, overwrite=True) as f:
        assert f.done_ids == set()


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"'sampels'.*Did you mean 'sampling'.*Valid keys"):
        to_schema({"model": {"sampels": 4}}, InferenceConfig)


def test_paper_overrides_map_onto_the_schema():
    cfg = to_schema(
        {
            "hf_tag": "HuggingFaceH4/MATH-500",
            "generated_file": "x.jsonl",
            "model": {
                "model_name_or_path": "Qwen/Qwen3-4B-Thinking-2507",
                "use_vllm": True,
                "math_agent": True,
                "examples": "deep_math/fewshot.txt",
                "max_agent_output": 20000,
                "max_steps": 50,
                "generation": {"max_new_tokens": 3000},
            },
        },
        InferenceConfig,
        LEGACY_KEYS,
    )
    assert cfg.model.engine == "vllm" and cfg.agent.max_agent_output == 20000
    assert cfg.model.template == "agent" and cfg.model.generation.max_new_tokens == 3000
    assert cfg.model.lora_path is None  # the embedded model's adapter is for the embedded model only


def test_hydra_cli_accepts_the_paper_overrides_and_rejects_typos(tmp_path):
    base = [sys.executable, "inference.py", "--cfg", "job"]
    ok = subprocess.run(
        base
        + [
            "+model.use_vllm=true",
            "+model.math_agent=true",
            "+model.examples=deep_math/fewshot.txt",
            "+model.max_agent_output=20000",
            "+model.max_steps=50",
            "model.generation.max_new_tokens=3000",
            "hf_tag=HuggingFaceH4/MATH-500",
            f"generated_file={tmp_path}/o.jsonl",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run(
        [sys.executable, "inference.py", "+model.max_step=5", f"generated_file={tmp_path}/o.jsonl"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0
    assert "max_step" in bad.stderr and "Did you mean 'max_steps'" in bad.stderr


def test_meta_records_each_arms_budget_and_both_arms_get_the_same_total():
    from deep_math.inference.config import ModelConfig
    from deep_math.inference.run import build_meta

    agent = build_meta(
        InferenceConfig(model=ModelConfig(math_agent=True), agent=AgentConfig(max_agent_output=5000))
    )
    baseline = build_meta(
        InferenceConfig(model=ModelConfig(math_agent=False), agent=AgentConfig(max_agent_output=5000))
    )
    assert agent["budget"]["total_tokens"] == baseline["budget"]["total_tokens"] == 5000
    assert agent["budget"]["tokens_per_call"] == 3000 and baseline["budget"]["tokens_per_call"] is None


@pytest.mark.parametrize(
    "key, old, new",
    [
        ("dataset", "HuggingFaceH4/MATH-500", "mini:test"),
        ("sampling", {"temperature": 0.6, "seed": 42}, {"temperature": 1.0, "seed": 42}),
        ("examples", "deep_math/fewshot.txt", None),
        ("examples_sha256", "aa", "bb"),
        ("split", "test", "train"),
    ],
)
def test_resume_refuses_other_data_sampling_or_examples_naming_the_key_and_the_fix(tmp_path, key, old, new):
    path = tmp_path / "g.jsonl"
    base = {"model": "a", "samples": 1}
    with GeneratedFile(path, {**base, key: old}) as f:
        f.write({"id": "0", "meta": {**base, key: old}})
    with pytest.raises(ValueError, match=rf"differing keys: {key} .*new file.*overwrite=true"):
        GeneratedFile(path, {**base, key: new})
    with GeneratedFile(path, {**base, key: old}) as f:  # same settings: resumes
        assert f.done_ids == {"0"}


def test_build_meta_records_what_resume_compares():
    from deep_math.inference.config import ModelConfig
    from deep_math.inference.records import RESUME_KEYS
    from deep_math.inference.run import build_meta

    meta = build_meta(InferenceConfig(hf_tag="mini:test", model=ModelConfig(math_agent=True)))
    assert set(RESUME_KEYS) <= set(meta)
    assert meta["dataset"] == "mini:test" and len(meta["examples_sha256"]) == 64


SEPARATORS = "a\u2028b\u2029c\x85d"


def test_line_separators_in_a_record_are_escaped_and_resume_reads_one_record_a_line(tmp_path):
    path = tmp_path / "g.jsonl"
    with GeneratedFile(path, {}) as f:
        f.write({"id": "0", "text": SEPARATORS, "meta": {}})
        f.write({"id": "1", "text": "plain", "meta": {}})
    raw = path.read_text(encoding="utf-8")
    assert not set("\u2028\u2029\x85") & set(raw)
    assert len(raw.splitlines()) == 2 and json.loads(raw.splitlines()[0])["text"] == SEPARATORS
    with GeneratedFile(path, {}) as f:
        assert f.done_ids == {"0", "1"}


def test_resume_reads_an_older_file_with_raw_line_separators(tmp_path):
    path = tmp_path / "g.jsonl"
    lines = [json.dumps({"id": i, "text": SEPARATORS, "meta": {}}, ensure_ascii=False) for i in "01"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with GeneratedFile(path, {}) as f:
        assert f.done_ids == {"0", "1"}


def test_one_agent_setting_reaches_all_three_entry_points(tmp_path):
    """agent.sandbox_memory_mb is one AgentConfig field: inference (agent.*), training (agent.*) and
    the server (--sandbox_memory_mb / agent: in its YAML) all set it, and the runner gets it."""
    from deep_math.serving.config import parse_args
    from deep_math.testing import compose_entry

    inference = compose_entry("inference.py", ["agent.sandbox_memory_mb=4096", "+model.max_steps=7"])
    training = compose_entry("training.py", ["agent.sandbox_memory_mb=4096"])
    server = parse_args(["--sandbox_memory_mb", "4096", "--max_steps", "7"])
    for cfg in (inference, training, server):
        assert isinstance(cfg.agent, AgentConfig) and cfg.agent.sandbox_memory_mb == 4096
    assert inference.agent.max_steps == server.agent.max_steps == 7  # the paper's flat spellings


def test_the_agent_on_the_embedded_model_gets_the_shipped_adapter_unless_told_otherwise(tmp_path):
    from deep_math.inference.config import ModelConfig
    from deep_math.models import EMBEDDED_ADAPTER_DIR

    shipped = ModelConfig(math_agent=True)
    assert shipped.lora_path == str(EMBEDDED_ADAPTER_DIR) and shipped.template == "mini"
    assert (EMBEDDED_ADAPTER_DIR / "adapter_model.safetensors").is_file()
    # switched off, another model, the baseline, the user's own adapter or prompt: theirs wins
    assert ModelConfig(math_agent=True, embedded_adapter=False).lora_path is None
    assert ModelConfig(math_agent=True, embedded_adapter=False).template == "agent"
    assert ModelConfig(math_agent=True, model_name_or_path="Qwen/Qwen3-4B").lora_path is None
    assert ModelConfig(math_agent=False).lora_path is None
    assert ModelConfig(math_agent=True, lora_path=str(tmp_path)).lora_path == str(tmp_path)
    assert ModelConfig(math_agent=True, engine="server").lora_path is None
    assert ModelConfig(math_agent=True, template="agent").template == "agent"


def test_a_missing_shipped_adapter_names_the_switch(monkeypatch, tmp_path):
    import deep_math.models as models
    from deep_math.inference.config import ModelConfig

    monkeypatch.setattr(models, "EMBEDDED_ADAPTER_DIR", tmp_path / "gone")
    with pytest.raises(ValueError, match=r"model\.embedded_adapter=false"):
        ModelConfig(math_agent=True)
