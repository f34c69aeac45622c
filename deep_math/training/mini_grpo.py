"""GRPO for Mini-DeepMath, starting from the cold-start SFT adapter.

    python -m deep_math.training.mini_grpo                            # configs/mini_grpo.yaml
    python -m deep_math.training.mini_grpo '~rewards' '+rewards={accuracy:0.1,code_use_gated:1.0}' \\
        train.output_dir=outputs/mini/grpo-gated                       # the gated code reward

The same trainer as `training.py` (`builders.build_trainer`: agentic rollouts with the current
policy, env_mask, the paper's rewards, the temperature schedule), with two differences:
- the policy is the SFT adapter (`init_adapter`), trained further, instead of a fresh LoRA;
- the mean accuracy reward on a fixed dev set (`dev_eval`, greedy, one sample per problem) is
  measured before training, every `dev_every` optimizer steps and after the last one, and written
  to `<output_dir>/dev_accuracy.json` ("before", "curve", "after") and into the training log, so
  training_curves.png shows it beside the rollout metrics: the per-step rollout accuracy is over a
  few new problems each step (noise), the dev curve is over the same problems each time.
  `dev_before` names another run's dev_accuracy.json whose "before"
  score is reused when it was measured on the same adapter (by content hash), dev set, prompt and
  agent limits (greedy, so it would be the same number): `example.sh mini` starts both GRPO runs
  from one SFT adapter and scores it once.
The schedule in configs/mini_grpo.yaml is scaled to the run (`temp_b_step: ${train.max_steps}`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deep_math.config_utils import ConfigError, to_schema
from deep_math.training.config import TrainingConfig

log = logging.getLogger(__name__)


@dataclass
class MiniGRPOConfig(TrainingConfig):
    """TrainingConfig + init_adapter: the peft adapter to continue (the SFT output; null = a
    fresh LoRA from `lora`) + dev_eval: a `load_problems` source scored before and after
    training (null = skip) + dev_before: a dev_accuracy.json whose "before" score to reuse (null =
    measure it)."""

    init_adapter: str | None = "outputs/mini/sft"
    dev_eval: str | None = "mini:rl_dev:24"
    dev_before: str | None = None
    dev_every: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dev_every is not None and self.dev_every < 1:
            raise ValueError(
                f"dev_every must be a positive number of optimizer steps or null (got {self.dev_every})"
            )


def load_mini_grpo_config(cfg: Any) -> MiniGRPOConfig:
    try:
        return to_schema(cfg, MiniGRPOConfig)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def dev_accuracy(
    model: Any, tokenizer: Any, problems: list, cfg: TrainingConfig, prefix_cache: bool = True
) -> dict[str, float]:
    """Greedy agent traces of `model` on `problems`: mean accuracy reward, tool use, model tokens.
    `prefix_cache`: prefill the prompts' shared prefix once (bench/mini_dev_eval.py compares)."""
    from deep_math.agent.runner import AgentRunner
    from deep_math.engines.base import SamplingParams
    from deep_math.engines.transformers import TransformersEngine
    from deep_math.prompts import build_prompt_ids, load_examples
    from deep_math.training.rewards import accuracy

    examples = load_examples(cfg.prompt.examples)
    prompts = [build_prompt_ids(tokenizer, p.problem, cfg.prompt.template, examples) for p in problems]
    was_training = model.training
    model.eval()
    # The prefix cache is safe here (off by default for a passed-in model): the engine lives for
    # this one call, and the weights do not change during it.
    engine = TransformersEngine(
        model=model, tokenizer=tokenizer, max_batch_size=len(prompts), prefix_cache=prefix_cache
    )
    try:
        with AgentRunner(engine, cfg.agent) as runner:
            traces = runner.run(
                prompts, SamplingParams(temperature=0.0, max_tokens=cfg.agent.max_agent_output)
            )
    finally:
        engine.close()
        if was_training:
            model.train()
    rewards = accuracy([t.text for t in traces], answer=[p.answer for p in problems])
    n = len(traces)
    return {
        "accuracy": sum(r or 0.0 for r in rewards) / n,
        "used_tool": sum(t.used_tool_successfully for t in traces) / n,
        "model_tokens": sum(t.model_tokens for t in traces) / n,
        "n": n,
    }


def dev_settings(cfg: MiniGRPOConfig) -> dict[str, Any]:
    """What a "before" dev score depends on: the start adapter's weights, the dev set, the prompt
    and the agent's limits (the traces are greedy)."""
    adapter = None
    if cfg.init_adapter is not None:
        weights = Path(cfg.init_adapter) / "adapter_model.safetensors"
        adapter = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    return {
        "adapter_sha256": adapter,
        "dev_eval": cfg.dev_eval,
        "model": cfg.model.model_name_or_path,
        "template": cfg.prompt.template,
        "examples": cfg.prompt.examples,
        "max_steps": cfg.agent.max_steps,
        "max_agent_output": cfg.agent.max_agent_output,
    }


def reused_before(cfg: MiniGRPOConfig) -> dict[str, Any] | None:
    """The "before" score of `cfg.dev_before` (None when unset); ConfigError when that file is
    missing or was measured under other settings (each differing one named)."""
    if cfg.dev_before is None:
        return None
    path = Path(cfg.dev_before)
    if not path.is_file():
        raise ConfigError(
            f"dev_before '{path}' does not exist; run without dev_before (measure it) or name a dev_accuracy.json"
        )
    scores = json.loads(path.read_text())
    theirs, ours = scores.get("settings") or {}, dev_settings(cfg)
    differ = sorted(k for k in ours if theirs.get(k) != ours[k])
    if differ or "before" not in scores:
        raise ConfigError(
            f"dev_before '{path}' was not measured under this run's settings (differ: {differ or ['no before score']}); "
            "drop dev_before=... to measure the start policy"
        )
    return scores["before"]


def dev_log_entry(step: int, score: dict[str, float]) -> dict[str, float]:
    """A log-history entry for a dev score (`deep_math.training.report` plots the dev/ keys)."""
    return {"step": step, **{f"dev/{k}": float(v) for k, v in score.items() if k != "n"}}


def dev_curve_callback(dev: list, tokenizer: Any, cfg: MiniGRPOConfig, before: dict | None) -> Any:
    """A TrainerCallback scoring the policy on `dev` after every `cfg.dev_every`-th optimizer step
    and after the last one; each score goes to the trainer's log history (which checkpoints keep,
    so a resumed run's curve is whole). `before` is logged as step 0."""
    from transformers import TrainerCallback

    class DevCurve(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if before is not None and state.global_step == 0:
                state.log_history.append(dev_log_entry(0, before))

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if step == state.max_steps or (cfg.dev_every and step % cfg.dev_every == 0):
                score = dev_accuracy(model, tokenizer, dev, cfg)
                log.info("Dev at step %d: %s", step, score)
                state.log_history.append(dev_log_entry(step, score))

    return DevCurve()


def load_start_policy(cfg: MiniGRPOConfig) -> tuple[Any, Any, MiniGRPOConfig]:
    """(model, tokenizer, cfg): the base model with the init adapter made trainable; cfg then has
    lora disabled (the trainer must not wrap a second adapter around it)."""
    from deep_math.training.builders import load_policy

    model, tokenizer = load_policy(cfg)
    if cfg.init_adapter is None:
        return model, tokenizer, cfg
    path = Path(cfg.init_adapter)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"init_adapter '{path}' holds no peft adapter; build it first with python -m deep_math.training.sft "
            f"train.output_dir={path}, or set init_adapter=null to start from a fresh LoRA"
        )
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(path), is_trainable=True)
    return model, tokenizer, replace(cfg, lora=replace(cfg.lora, enabled=False))


def run_mini_grpo(cfg: MiniGRPOConfig) -> Path:
    """Train, save the adapter + training report + dev_accuracy.json to train.output_dir."""
    from deep_math.data import load_problems
    from deep_math.training.builders import build_trainer, load_train_problems, write_report

    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, _ = load_train_problems(cfg)
    dev = load_problems(cfg.dev_eval) if cfg.dev_eval else []
    before = reused_before(cfg) if dev else None  # checked before the model loads
    model, tokenizer, cfg = load_start_policy(cfg)
    scores: dict[str, Any] = {
        "dev_eval": cfg.dev_eval,
        "init_adapter": cfg.init_adapter,
        "rewards": cfg.rewards,
        "settings": dev_settings(cfg),
    }
    if before is not None:
        scores["before"], scores["before_from"] = before, cfg.dev_before
        log.info("Dev before GRPO (from %s): %s", cfg.dev_before, before)
    elif dev:
        scores["before"] = dev_accuracy(model, tokenizer, dev, cfg)
        log.info("Dev before GRPO: %s", scores["before"])
    trainer = build_trainer(cfg, train, model=model, tokenizer=tokenizer)
    if dev:
        trainer.add_callback(dev_curve_callback(dev, tokenizer, cfg, scores.get("before")))
    started = time.monotonic()
    try:
        trainer.train()
    finally:
        trainer.deep_math_rollout.close()
    scores["train_seconds"] = round(time.monotonic() - started, 1)
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    write_report(trainer.state.log_history, out)
    if dev:
        curve = [e for e in trainer.state.log_history if "dev/accuracy" in e]
        scores["curve"] = [{k.removeprefix("dev/"): v for k, v in e.items()} for e in curve]
        if curve and curve[-1]["step"] == trainer.state.global_step:  # scored at the last step
            scores["after"] = {**{k: v for k, v in scores["curve"][-1].items() if k != "step"}, "n": len(dev)}
        else:  # no dev score logged at the last step (a checkpoint from before this feature)
            scores["after"] = dev_accuracy(trainer.model, tokenizer, dev, cfg)
        log.info("Dev after GRPO: %s", scores["after"])
    (out / "dev_accuracy.json").write_text(json.dumps(scores, indent=1))
    return out


def _main() -> None:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(config_path="../../configs", config_name="mini_grpo", version_base=None)
    def main(raw: DictConfig) -> None:
        try:
            cfg = load_mini_grpo_config(raw)
        except ConfigError as exc:
            raise SystemExit(f"Config error: {exc}") from None
        out = run_mini_grpo(cfg)
        print(f"Saved the GRPO adapter to {out}; dev accuracy before/after in {out}/dev_accuracy.json")  # noqa: T201

    main()


if __name__ == "__main__":
    _main()
