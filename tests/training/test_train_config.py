"""Every shipped training config composes and validates; mistakes fail naming the fix."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from deep_math.config_utils import ConfigError
from deep_math.testing import REPO
from deep_math.training.config import TrainingConfig, load_training_config

CONFIGS = REPO / "configs"


def compose_training(name: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name=name, overrides=overrides or [])


@pytest.mark.parametrize("name", ["training", "training_paper"])
def test_shipped_configs_validate_and_start_with_their_command(name):
    cfg = load_training_config(compose_training(name))
    assert isinstance(cfg, TrainingConfig)
    first = (CONFIGS / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# ") and "training.py" in first


def test_default_is_the_embedded_cpu_run():
    cfg = load_training_config(compose_training("training"))
    assert cfg.model.model_name_or_path is None and cfg.data.hf_tag is None
    assert cfg.train.max_steps <= 3 and cfg.lora.enabled and cfg.rollout.backend == "policy"
    assert cfg.rewards == {"accuracy": 0.1, "code_use": 1.0}


def test_paper_config_holds_the_paper_settings():
    cfg = load_training_config(compose_training("training_paper"))
    t = cfg.train
    assert cfg.model.model_name_or_path == "Qwen/Qwen3-4B-Thinking-2507"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.use_rslora) == (32, 16, 0.1, True)
    assert cfg.lora.target_modules == "all-linear"
    assert (t.num_generations, t.learning_rate, t.lr_scheduler_type) == (4, 1e-6, "cosine")
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.epsilon_high) == (4, 2, 0.4)
    assert (t.ref_model_mixup_alpha, t.ref_model_sync_steps, t.top_p, t.top_k) == (0.4, 300, 0.8, 50)
    assert t.max_completion_length == cfg.agent.max_agent_output == 5000
    assert (cfg.temperature.temp_a, cfg.temperature.temp_b, cfg.temperature.temp_b_step) == (1.2, 0.7, 1000)
    assert cfg.data.dev_size == 150 and cfg.prompt.examples == "deep_math/fewshot.txt"


def test_grpo_args_are_valid_trl_1_16_arguments(tmp_path):
    from deep_math.training.builders import build_grpo_args
    from deep_math.training.rewards import build_rewards

    for name in ("training", "training_paper"):
        cfg = load_training_config(
            compose_training(name, [f"train.output_dir={tmp_path}", "train.use_cpu=true"])
        )
        args = build_grpo_args(cfg, build_rewards(cfg.rewards)[1])
        assert args.use_cpu and not args.bf16
        assert args.reward_weights == [0.1, 1.0] and args.temperature == 1.2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+train.lerning_rate=1e-5"], r"'lerning_rate'.*Did you mean 'learning_rate'"),
        (
            ["+rewards.acc=1.0"],
            r"Unknown reward 'acc'.*Available: \['accuracy', 'brevity', 'code_use', 'code_use_gated'\]",
        ),
        (
            ["temperature.temp_a_step=1000", "temperature.temp_b_step=200"],
            r"temp_a_step \(1000\) must be < temp_b_step \(200\)",
        ),
        (
            ["agent.max_agent_output=1000"],
            r"agent.max_agent_output \(1000\) must be <= train.max_completion_length",
        ),
        (["rollout.backend=vllm"], r"rollout.backend must be one of \['policy', 'server'\]"),
        (["train.report_to=mlflow"], r"report_to must be one of"),
        (["train.num_generations=3"], r"must be a multiple of num_generations"),
    ],
)
def test_mistakes_fail_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_training_config(compose_training("training", overrides))


def test_the_local_rollout_engine_gets_the_rollout_settings_it_takes():
    from deep_math.training.builders import build_trace_source

    cfg = load_training_config(compose_training("training", ["rollout.max_batch_size=4"]))
    source = build_trace_source(cfg, tokenizer=None)
    assert source.engine_kwargs == {"max_batch_size": 4, "batch_wait_ms": cfg.rollout.batch_wait_ms}


def test_a_misspelled_local_engine_option_fails_before_the_first_rollout():
    from deep_math.agent.config import AgentConfig
    from deep_math.training.sources import PolicyTraceSource

    with pytest.raises(ConfigError, match="'batch_wait'. Did you mean 'batch_wait_ms'"):
        PolicyTraceSource(AgentConfig(), tokenizer=None, batch_wait=5)
