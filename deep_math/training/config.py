"""The schema of `configs/training.yaml` (and `configs/training_paper.yaml`).

Hydra composes the YAML; `load_training_config` converts it into `TrainingConfig`, so an unknown
key fails at start-up listing the valid ones and bad values fail with a message naming the fix.
`train` holds the TRL `GRPOConfig` settings we use (TRL 1.16 names); `train.extra` passes any
other GRPOConfig field through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deep_math.agent.config import AgentConfig
from deep_math.config_utils import ConfigError, to_schema
from deep_math.training.rewards import DEFAULT_REWARD_WEIGHTS, build_rewards
from deep_math.training.schedule import LinearTemperatureSchedule

ROLLOUT_BACKENDS = ("policy", "server")
REPORT_TO = ("none", "wandb", "tensorboard")


@dataclass
class ModelSettings:
    """model_name_or_path: null -> the embedded SmolLM2-135M-Instruct (trainable local copy).
    dtype: "auto" (float32 on CPU, bfloat16 on CUDA), or a torch dtype name."""

    model_name_or_path: str | None = None
    dtype: str = "auto"
    attn_implementation: str | None = None


@dataclass
class LoraSettings:
    enabled: bool = True
    r: int = 32
    alpha: int = 16
    dropout: float = 0.1
    use_rslora: bool = True
    target_modules: Any = "all-linear"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DataSettings:
    """hf_tag: null -> the bundled sample problems; a local .jsonl/.json/.parquet file; or a hub
    dataset tag. dev_size problems (drawn with dev_seed) are held out of training and written to
    `<output_dir>/dev.jsonl` for evaluation."""

    hf_tag: str | None = None
    split: str = "train"
    problem_key: str = "problem"
    answer_key: str = "answer"
    id_key: str = "id"
    limit: int | None = None
    shuffle_seed: int | None = None
    dev_size: int = 0
    dev_seed: int = 0


@dataclass
class PromptSettings:
    template: str = "agent"
    examples: str | None = "deep_math/fewshot.txt"


@dataclass
class RolloutSettingsConfig:
    """backend: "policy" (agent runner in the trainer process, transformers engine wrapping the
    trainer's own model) or "server" (a `python -m deep_math.vllm_serve_agent` server at
    server_url; its max_steps/max_agent_output must equal agent.*, checked at start-up).
    max_batch_size/batch_wait_ms: micro-batching of the local transformers engine."""

    backend: str = "policy"
    server_url: str = "http://127.0.0.1:8000"
    server_timeout: float = 240.0
    request_timeout: float | None = None
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in ROLLOUT_BACKENDS:
            raise ValueError(f"rollout.backend must be one of {list(ROLLOUT_BACKENDS)}, got '{self.backend}'")


@dataclass
class TrainSettings:
    """TRL 1.16 GRPOConfig fields (same names). use_cpu/bf16 null: decided from CUDA availability."""

    output_dir: str = "outputs/training"
    max_steps: int = 2
    num_train_epochs: float = 1.0
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    num_generations: int = 4
    max_completion_length: int = 256
    top_p: float = 1.0
    top_k: int = 0
    beta: float = 0.0
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    scale_rewards: str = "group"
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512
    logging_steps: int = 1
    save_steps: int = 100
    save_total_limit: int | None = None
    report_to: str = "none"
    run_name: str | None = None
    seed: int = 42
    use_cpu: bool | None = None
    bf16: bool | None = None
    gradient_checkpointing: bool = True
    log_completions: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.report_to not in REPORT_TO:
            raise ValueError(f"train.report_to must be one of {list(REPORT_TO)}, got '{self.report_to}'")
        if self.max_completion_length < 1:
            raise ValueError(f"train.max_completion_length must be >= 1, got {self.max_completion_length}")
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size * gradient_accumulation_steps ({batch}) must be a multiple of "
                f"num_generations ({self.num_generations})"
            )


@dataclass
class TrainingConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    prompt: PromptSettings = field(default_factory=PromptSettings)
    agent: AgentConfig = field(default_factory=AgentConfig)
    rollout: RolloutSettingsConfig = field(default_factory=RolloutSettingsConfig)
    temperature: LinearTemperatureSchedule = field(default_factory=LinearTemperatureSchedule)
    rewards: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARD_WEIGHTS))
    train: TrainSettings = field(default_factory=TrainSettings)
    resume: bool = False

    def __post_init__(self) -> None:
        build_rewards(self.rewards)  # unknown reward names fail here, listing the known ones
        if self.agent.max_agent_output > self.train.max_completion_length:
            raise ValueError(
                f"agent.max_agent_output ({self.agent.max_agent_output}) must be <= train.max_completion_length "
                f"({self.train.max_completion_length}): traces longer than the completion limit would be cut "
                "in training. Lower agent.max_agent_output or raise train.max_completion_length."
            )
        if self.train.sync_ref_model and self.train.beta == 0.0:
            raise ValueError(
                "train.sync_ref_model=true needs train.beta > 0: with beta 0 the loss has no KL term and no "
                "reference model to sync (the paper used beta 0.04). Set train.beta or train.sync_ref_model=false."
            )


def refuse_bare_demo_on_gpu(config_name: str, overrides: list[str], cuda_available: bool) -> None:
    """The paper's trainer command is a bare `accelerate launch ... training.py`. Here configs/
    training.yaml is the CPU demo (embedded SmolLM2, 2 steps, rollouts in-process), which on a GPU
    node would quietly train the wrong model while the agent server the user started sits idle. So
    the default config with no override at all on a CUDA machine stops and names the paper's
    command; any override (e.g. `train.max_steps=2`) says the user chose the demo on purpose."""
    if config_name != "training" or overrides or not cuda_available:
        return
    raise ConfigError(
        "configs/training.yaml is the CPU demo (embedded SmolLM2-135M, 2 steps, local rollouts), and "
        "this machine has CUDA GPUs. The paper's run (Qwen3-4B-Thinking, agent server on its own GPUs):\n"
        "  python -m deep_math.vllm_serve_agent --config configs/vllm_agent_server_4B.yaml &\n"
        "  accelerate launch --config_file configs/zero2.yaml --num_processes 2 training.py "
        "--config-name training_paper rollout.backend=server\n"
        "To train the demo on this GPU anyway, give any override, e.g. training.py train.max_steps=2"
    )


def load_training_config(cfg: Any) -> TrainingConfig:
    """Hydra DictConfig (or a mapping) -> TrainingConfig; raises ConfigError naming the fix."""
    try:
        return to_schema(cfg, TrainingConfig)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
