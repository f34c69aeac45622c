"""Cold-start SFT of the embedded model on Mini-DeepMath tool traces (TRL SFTTrainer + LoRA).

    python -m deep_math.training.sft                                   # configs/sft.yaml
    python -m deep_math.training.sft data.source=mini:train:200 train.num_train_epochs=1

The paper teaches the tool format in context (a ~1,000-token few-shot block); a 135M model
does not pick it up that way, so, as ReTool and rStar2 do, it gets a short supervised cold start
first. Traces come from `sft_data.build_sft_examples` (the agent loop with a scripted model and
the real sandbox), the loss is on the model's own tokens only (labels -100 on the prompt and on
the ```output block, the same env_mask GRPO uses), and the prompt is the short "mini" template.

Output (train.output_dir): the peft adapter + tokenizer (load with
`python inference.py model.lora_path=DIR`, or start GRPO from it with
`python -m deep_math.training.mini_grpo init_adapter=DIR`), `sft_traces.jsonl` (the traces
trained on), `sft_log.json` (TRL's log history) and `sft_config.yaml`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deep_math.agent.config import AgentConfig
from deep_math.config_utils import ConfigError, to_schema
from deep_math.training.config import LoraSettings, ModelSettings

log = logging.getLogger(__name__)

REPORT_TO = ("none", "wandb", "tensorboard")


@dataclass
class SFTDataSettings:
    """source: a `load_problems` source whose rows carry `code`/`intro` (the `mini:` sources)."""

    source: str = "mini:train"
    limit: int | None = None


@dataclass
class SFTTrainSettings:
    """TRL 1.16 SFTConfig fields (same names); `extra` passes any other SFTConfig field through."""

    output_dir: str = "outputs/mini/sft"
    num_train_epochs: float = 2.0
    max_steps: int = -1
    learning_rate: float = 5e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 5
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 256
    logging_steps: int = 5
    seed: int = 0
    use_cpu: bool | None = None
    bf16: bool | None = None
    report_to: str = "none"
    gradient_checkpointing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.report_to not in REPORT_TO:
            raise ValueError(f"train.report_to must be one of {list(REPORT_TO)}, got '{self.report_to}'")
        if self.max_length < 32:
            raise ValueError(f"train.max_length must be >= 32, got {self.max_length}")


@dataclass
class SFTRunConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: SFTDataSettings = field(default_factory=SFTDataSettings)
    template: str = "mini"
    lora_layers: int | None = 10
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(max_steps=1, max_agent_output=256))
    train: SFTTrainSettings = field(default_factory=SFTTrainSettings)

    def __post_init__(self) -> None:
        from deep_math.prompts import get_template

        get_template(self.template)  # unknown names fail here, listing the templates
        if self.lora_layers is not None and self.lora_layers < 1:
            raise ValueError(f"lora_layers must be >= 1 or null (all layers), got {self.lora_layers}")
        if not self.lora.enabled:
            raise ValueError(
                "lora.enabled=false: the SFT recipe trains a LoRA adapter (set lora.enabled=true)"
            )


def load_sft_config(cfg: Any) -> SFTRunConfig:
    """Hydra DictConfig (or a mapping) -> SFTRunConfig; raises ConfigError naming the fix."""
    try:
        return to_schema(cfg, SFTRunConfig)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def build_lora_config(cfg: SFTRunConfig, num_layers: int) -> Any:
    """The run's LoraConfig; with `lora_layers=N` only the last N decoder layers get adapters, so
    the backward pass stops there (on 2 CPU cores that roughly halves a step)."""
    from deep_math.training.builders import build_peft_config

    peft_config = build_peft_config(cfg)  # type: ignore[arg-type] - reads cfg.lora
    if cfg.lora_layers is not None and cfg.lora_layers < num_layers:
        peft_config.layers_to_transform = list(range(num_layers - cfg.lora_layers, num_layers))
    return peft_config


def build_sft_args(cfg: SFTRunConfig) -> Any:
    from trl import SFTConfig

    from deep_math.training.builders import cpu_has_native_bf16, cuda_available

    t = cfg.train
    on_cuda = cuda_available() and not t.use_cpu
    # bf16 null: on CUDA, and on CPUs with bf16 hardware (autocast; the LoRA weights stay fp32)
    kwargs = {k: v for k, v in asdict(t).items() if k not in ("use_cpu", "bf16", "extra", "report_to")}
    kwargs.update(
        use_cpu=not on_cuda if t.use_cpu is None else t.use_cpu,
        bf16=(on_cuda or cpu_has_native_bf16()) if t.bf16 is None else t.bf16,
        report_to=[] if t.report_to == "none" else [t.report_to],
        save_strategy="no",  # minutes-long run: the final adapter is saved at the end
        remove_unused_columns=False,
    )
    kwargs.update(t.extra)
    return SFTConfig(**kwargs)


def run_sft(cfg: SFTRunConfig) -> Path:
    """Build the traces, train the adapter, save everything to train.output_dir; return it."""
    from omegaconf import OmegaConf
    from trl import SFTTrainer

    from deep_math.data import load_problems
    from deep_math.training.builders import load_policy
    from deep_math.training.sft_data import build_sft_examples, to_dataset

    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_policy(cfg)  # type: ignore[arg-type] - reads cfg.model and cfg.train.use_cpu

    started = time.monotonic()
    problems = load_problems(cfg.data.source, limit=cfg.data.limit)
    examples, dropped = build_sft_examples(problems, tokenizer, template=cfg.template, agent=cfg.agent)
    if not examples:
        raise ValueError(f"no SFT traces from '{cfg.data.source}' ({dropped} dropped)")
    log.info("Built %d SFT traces (%d dropped) in %.0f s", len(examples), dropped, time.monotonic() - started)
    with (out / "sft_traces.jsonl").open("w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"id": e.problem_id, "text": e.text}) + "\n")

    trainer = SFTTrainer(
        model=model,
        args=build_sft_args(cfg),
        train_dataset=to_dataset(examples),
        processing_class=tokenizer,
        peft_config=build_lora_config(cfg, model.config.num_hidden_layers),
    )
    started = time.monotonic()
    trainer.train()
    log.info("SFT took %.0f s", time.monotonic() - started)
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "sft_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    (out / "sft_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(asdict(cfg))))
    return out


def _main() -> None:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(config_path="../../configs", config_name="sft", version_base=None)
    def main(raw: DictConfig) -> None:
        try:
            cfg = load_sft_config(raw)
        except ConfigError as exc:
            raise SystemExit(f"Config error: {exc}") from None
        out = run_sft(cfg)
        print(f"Saved the SFT adapter to {out} (use it: python inference.py model.lora_path={out})")  # noqa: T201

    main()


if __name__ == "__main__":
    _main()
