"""mini_grpo's dev curve: the fixed dev set is scored at step 0, every `dev_every` steps and at the
end, on the policy as it is at that step; the scores reach dev_accuracy.json and the training
report. Tiny random model (fast)."""

from __future__ import annotations

import csv
import json

import pytest

from deep_math.config_utils import ConfigError
from deep_math.testing import compose_module, distinct_chars, tiny_model_dir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_dev_curve_scores_the_policy_of_each_step(tokenizer, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from deep_math.data import load_problems
    from deep_math.training import mini_grpo, rewards
    from deep_math.training.mini_grpo import dev_accuracy, run_mini_grpo

    monkeypatch.setitem(
        rewards.REWARDS, "distinct_chars", distinct_chars
    )  # random model: non-zero advantages
    scored = []  # the LoRA B weights (zero at the start) of the policy each dev score was taken on

    def recording(model, *args, **kwargs):
        scored.append(lora_b(model))
        return dev_accuracy(model, *args, **kwargs)

    monkeypatch.setattr(mini_grpo, "dev_accuracy", recording)
    model_dir = tiny_model_dir(tokenizer, tmp_path / "tiny")
    out = tmp_path / "grpo"
    args = [
        f"model.model_name_or_path={model_dir}",
        "init_adapter=null",
        "lora.r=4",
        "lora.alpha=8",
        "lora.dropout=0.0",
        "data.hf_tag=mini:rl",
        "data.limit=4",
        "dev_eval=mini:rl_dev:3",
        "dev_every=2",
        "agent.max_agent_output=24",
        "train.max_steps=3",
        "train.learning_rate=5e-2",
        "train.per_device_train_batch_size=4",
        "train.num_generations=4",
        "train.max_completion_length=24",
        "train.use_cpu=true",
        "train.bf16=false",
        f"train.output_dir={out}",
        "~rewards",
        "+rewards={distinct_chars:1.0}",
    ]
    cfg = compose_module("mini_grpo", args)
    run_mini_grpo(cfg)

    scores = json.loads((out / "dev_accuracy.json").read_text())
    assert [p["step"] for p in scores["curve"]] == [0, 2, 3]  # before, every 2nd step, the end
    assert scores["curve"][0]["model_tokens"] == scores["before"]["model_tokens"]
    assert {k: v for k, v in scores["curve"][-1].items() if k != "step"} == {
        k: v for k, v in scores["after"].items() if k != "n"
    }
    # scored on the policy as it was then: untrained at step 0, moved at 2, moved further at 3 = saved
    assert len(scored) == 3 and scored[0] == 0.0
    assert 0.0 < scored[1] != scored[2]
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    saved = PeftModel.from_pretrained(base, str(out))
    assert lora_b(saved) == pytest.approx(scored[2], rel=1e-5)
    again = dev_accuracy(saved, tokenizer, load_problems("mini:rl_dev:3"), cfg)
    assert again["model_tokens"] == scores["after"]["model_tokens"]
    assert again["accuracy"] == scores["after"]["accuracy"]

    with (out / "training_log.csv").open() as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    assert {s for s, r in rows.items() if r.get("dev/accuracy")} == {0, 2, 3}
    assert "dev acc" in (out / "training_summary.md").read_text()
    assert (out / "training_curves.png").stat().st_size > 0


def lora_b(model) -> float:
    return float(sum(p.detach().abs().sum() for n, p in model.named_parameters() if "lora_B" in n))


def test_dev_every_must_be_positive():
    with pytest.raises(ConfigError, match="dev_every"):
        compose_module("mini_grpo", ["dev_every=0"])
