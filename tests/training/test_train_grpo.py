"""GRPO on a tiny random model: observation tokens get no loss; a 2-step run with local rollouts."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from deep_math.agent.config import AgentConfig
from deep_math.data import Problem
from deep_math.engines.scripted import ScriptedEngine
from deep_math.testing import tiny_config, tiny_model_dir
from deep_math.training.builders import build_trainer, load_policy
from deep_math.training.sources import RunnerTraceSource

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PROBLEM = Problem(id="p1", problem="What is 6*7?", answer="42")


@pytest.fixture(scope="module")
def tiny_dir(tokenizer, tmp_path_factory):
    return tiny_model_dir(tokenizer, tmp_path_factory.mktemp("tiny") / "model")


CALL = "<tool_call>\n{code}\n</tool_call>"


def scripted_source(tokenizer):
    """Traces 0 and 2 use the tool successfully, 1 and 3 answer without it (reward variance)."""
    with_tool = [CALL.format(code="print(6*7)"), " so \\boxed{42}<|im_end|>"]

    def reply(request, index):
        # one trace per prompt position: with max_concurrency=1 traces run in order
        return with_tool[reply.step] if reply.trace % 2 == 0 else "\\boxed{42}<|im_end|>"

    reply.trace, reply.step = 0, 0

    def script(request, index):
        text = reply(request, index)
        if reply.trace % 2 == 0 and reply.step == 0:
            reply.step = 1
        else:
            reply.trace, reply.step = reply.trace + 1, 0
        return text

    engine = ScriptedEngine(tokenizer, script)
    return RunnerTraceSource(engine, AgentConfig(max_steps=2, max_agent_output=48, max_concurrency=1))


def test_observation_tokens_get_no_loss(tokenizer, tiny_dir, tmp_path):
    cfg = tiny_config(tiny_dir, tmp_path / "out", rewards={"code_use": 1.0})
    model, tok = load_policy(cfg)
    trainer = build_trainer(cfg, [PROBLEM], model=model, tokenizer=tok, source=scripted_source(tokenizer))
    try:
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop otherwise
        batch = [{"prompt": PROBLEM.problem, "answer": "42", "problem_id": "p1"} for _ in range(4)]
        inputs = trainer._generate_and_score_completions(batch)
        env = inputs["tool_mask"] * inputs["completion_mask"]
        assert (inputs["tool_mask"] == 0).any(), "scripted traces contain observation tokens"
        assert inputs["advantages"].abs().sum() > 0

        captured = {}
        original = trainer._get_per_token_logps_and_entropies

        def capture(*args, **kwargs):
            logps, entropies, aux = original(*args, **kwargs)
            logps.retain_grad()
            captured["logps"] = logps
            return logps, entropies, aux

        trainer._get_per_token_logps_and_entropies = capture
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        grad = captured["logps"].grad
        assert grad is not None
        obs = (inputs["tool_mask"] == 0) & (inputs["completion_mask"] == 1)
        assert torch.all(grad[obs] == 0), "observation tokens must get no gradient"
        assert torch.any(grad[env.bool()] != 0), "model tokens do get gradient"
    finally:
        trainer.deep_math_rollout.close()


def test_two_step_grpo_with_local_policy_rollouts(tiny_dir, tmp_path, monkeypatch):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from deep_math.testing import distinct_chars
    from deep_math.training import rewards

    monkeypatch.setitem(rewards.REWARDS, "distinct_chars", distinct_chars)
    out = tmp_path / "out"
    cfg = tiny_config(tiny_dir, out, rewards={"accuracy": 0.1, "code_use": 1.0, "distinct_chars": 1.0})
    model, tok = load_policy(cfg)
    trainer = build_trainer(cfg, [PROBLEM, Problem("p2", "What is 2+2?", "4")], model=model, tokenizer=tok)
    temps = []
    original = trainer.deep_math_rollout.sampling
    trainer.deep_math_rollout.sampling = lambda t, n: (
        temps.append((t.temperature, t.loss_temperature)) or original(t, n)
    )
    try:
        trainer.train()
        engine = trainer.deep_math_rollout.source.engine
        assert engine.model is trainer.model  # rollouts sample from the trained (peft) model itself
    finally:
        trainer.deep_math_rollout.close()
    trainer.save_model(str(out))
    assert not any(k.startswith("eval_") for k in trainer.state.log_history[0]), "rollouts ran in train mode"

    assert temps == [(1.2, 1.2), (0.95, 0.95)]  # schedule 1.2 -> 0.7 over steps 0..2
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items()), "LoRA moved"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["use_rslora"] is True
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    PeftModel.from_pretrained(base, str(out))  # a standard peft adapter folder


def test_resume_continues_from_the_last_checkpoint(tiny_dir, tmp_path, monkeypatch):
    from deep_math.testing import distinct_chars
    from deep_math.training import rewards
    from deep_math.training.builders import run_training

    monkeypatch.setitem(rewards.REWARDS, "distinct_chars", distinct_chars)
    out = tmp_path / "out"
    first = tiny_config(tiny_dir, out, rewards={"distinct_chars": 1.0}, **{"train.max_steps": 1})
    run_training(first)
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    # A save of step 2 that was killed half-way: weights written, trainer_state.json not yet.
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"half-written")
    second = tiny_config(tiny_dir, out, rewards={"distinct_chars": 1.0}, resume=True)
    run_training(second)  # resumes from checkpoint-1, then saves step 2 over the broken folder
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == [1, 2]  # step 1 from the first run, step 2 after resuming (not 1 again)
    assert (out / "adapter_config.json").is_file()
    with (out / "training_log.csv").open() as f:  # the report covers the whole run, not the last leg
        logged = list(csv.DictReader(f))
    assert [row["step"] for row in logged] == ["1", "2"] and "rewards/distinct_chars/mean" in logged[0]
    assert "distinct_chars" in (out / "training_summary.md").read_text()
    assert (out / "training_curves.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("sync", [False, True])
def test_lora_reference_sync_and_its_resume(tiny_dir, tmp_path, monkeypatch, sync):
    """With LoRA the reference is a "ref" adapter that TRL uses for the KL term. alpha 1 syncs it to
    the policy after every step, so the KL of step 2 is 0; without sync the reference stays the
    base model and the KL of step 2 is not. The synced run is interrupted after step 1 and resumed:
    a reference not restored from the checkpoint would be the base model again."""
    from deep_math.testing import distinct_chars
    from deep_math.training import rewards
    from deep_math.training.builders import run_training

    monkeypatch.setitem(rewards.REWARDS, "distinct_chars", distinct_chars)
    out = tmp_path / "out"
    settings = {
        "rewards": {"distinct_chars": 1.0},
        "train.beta": 0.04,
        "train.sync_ref_model": sync,
        "train.ref_model_mixup_alpha": 1.0,
        "train.ref_model_sync_steps": 1,
    }
    if sync:
        run_training(tiny_config(tiny_dir, out, **settings, **{"train.max_steps": 1}))
        assert (out / "checkpoint-1" / "ref" / "adapter_model.safetensors").is_file()
        run_training(tiny_config(tiny_dir, out, **settings, resume=True))
    else:
        run_training(tiny_config(tiny_dir, out, **settings))
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    kl = {e["step"]: e["kl"] for e in state["log_history"] if "kl" in e}
    assert kl[1] < 1e-6  # the policy adapter starts at zero: policy = base = reference
    if sync:
        assert kl[2] < 1e-6, kl
    else:
        assert kl[2] > 1e-5, kl
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4  # the saved policy adapter is the default one, loadable as before


def test_reference_sync_without_kl_fails_with_the_fix(tiny_dir, tmp_path):
    from deep_math.config_utils import ConfigError

    with pytest.raises(ConfigError, match=r"sync_ref_model=true needs train.beta > 0"):
        tiny_config(tiny_dir, tmp_path, **{"train.sync_ref_model": True})
