"""Build the pieces of a GRPO run from a `TrainingConfig`: data, model, rewards, rollout, trainer.

`training.py` is config -> `run_training` -> done; each builder here is usable on its own (tests
build a trainer around a tiny model and a scripted rollout).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deep_math.engines import engine_kwargs
from deep_math.training.checkpoints import last_complete_checkpoint
from deep_math.training.config import TrainingConfig
from deep_math.training.rewards import build_rewards
from deep_math.training.rollout import AgentRollout, RolloutSettings, TraceSource

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True where the CPU multiplies bfloat16 in hardware (x86 `avx512_bf16` or `amx_bf16`):
    there bf16 autocast makes a CPU SFT step about 2x faster (bench/sft_bf16.py printed 2.03x); elsewhere
    it is emulated and slower, so the answer is False (also off Linux, where we cannot tell)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


# --- data -------------------------------------------------------------------------------------


def load_train_problems(cfg: TrainingConfig) -> tuple[list, list]:
    """(train, dev) problems; dev is empty when data.dev_size is 0."""
    from deep_math.data import load_problems, split_dev

    d = cfg.data
    problems = load_problems(
        d.hf_tag,
        split=d.split,
        problem_key=d.problem_key,
        answer_key=d.answer_key,
        id_key=d.id_key,
        limit=d.limit,
        shuffle_seed=d.shuffle_seed,
    )
    if d.dev_size:
        return split_dev(problems, d.dev_size, d.dev_seed)
    return list(problems), []


def build_dataset(problems: list) -> Any:
    """A `datasets.Dataset` with `prompt` (the problem text; the rollout renders the chat
    prompt), `answer` (gold, for the accuracy reward) and `problem_id`."""
    from datasets import Dataset

    if not problems:
        raise ValueError("no training problems (check data.hf_tag, data.limit and data.dev_size)")
    return Dataset.from_list(
        [{"prompt": p.problem, "answer": p.answer, "problem_id": p.id} for p in problems]
    )


def write_dev_split(dev: list, output_dir: str) -> Path | None:
    if not dev:
        return None
    path = Path(output_dir) / "dev.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in dev:
            f.write(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer}) + "\n")
    return path


# --- model ------------------------------------------------------------------------------------


def _torch_dtype(name: str, on_cuda: bool) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if on_cuda else torch.float32
    return getattr(torch, name)


def load_policy(cfg: TrainingConfig) -> tuple[Any, Any]:
    """(model, tokenizer) for training; model_name_or_path null -> the embedded model's copy."""
    from transformers import AutoModelForCausalLM

    from deep_math.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(cfg.model.model_name_or_path)
    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype(cfg.model.dtype, cuda_available() and not cfg.train.use_cpu)
    }
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model, load_tokenizer(path)


def build_peft_config(cfg: TrainingConfig) -> Any:
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    lo = cfg.lora
    target = lo.target_modules if isinstance(lo.target_modules, str) else list(lo.target_modules)
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        use_rslora=lo.use_rslora,
        target_modules=target,
        task_type="CAUSAL_LM",
    )


# --- TRL arguments ----------------------------------------------------------------------------


def build_grpo_args(cfg: TrainingConfig, reward_weights: list[float]) -> Any:
    """GRPOConfig from `cfg.train`. CPU runs get use_cpu=True, bf16=False (TRL 1.16 needs both)."""
    from trl import GRPOConfig

    t = cfg.train
    on_cuda = cuda_available() and not t.use_cpu
    kwargs = {k: v for k, v in asdict(t).items() if k not in ("use_cpu", "bf16", "extra", "report_to")}
    kwargs.update(
        use_cpu=not on_cuda if t.use_cpu is None else t.use_cpu,
        bf16=on_cuda if t.bf16 is None else t.bf16,
        report_to=[] if t.report_to == "none" else [t.report_to],
        temperature=cfg.temperature(0),
        # With LoRA, TRL refuses sync_ref_model; DeepMathGRPOTrainer syncs a "ref" adapter instead.
        sync_ref_model=t.sync_ref_model and not cfg.lora.enabled,
        reward_weights=reward_weights,
        save_strategy="steps",
        # Our dataset has the problem text, answer and id; the rollout needs the text only.
        remove_unused_columns=False,
    )
    kwargs.update(t.extra)
    return GRPOConfig(**kwargs)


# --- rollout ----------------------------------------------------------------------------------


def build_trace_source(cfg: TrainingConfig, tokenizer: Any) -> TraceSource:
    from deep_math.training.sources import PolicyTraceSource, ServerTraceSource

    r = cfg.rollout
    if r.backend == "policy":
        # The rollout settings the local engine takes (max_batch_size, batch_wait_ms).
        return PolicyTraceSource(cfg.agent, tokenizer, **engine_kwargs("transformers", asdict(r)))
    from deep_math.serving.client import AgentVLLMClient
    from deep_math.serving.config import HANDSHAKE_KEYS

    client = AgentVLLMClient(
        base_url=r.server_url, connection_timeout=r.server_timeout, request_timeout=r.request_timeout
    )
    client.check_compatible(**{key: getattr(cfg.agent, key) for key in HANDSHAKE_KEYS})
    return ServerTraceSource(client)


def build_rollout(cfg: TrainingConfig, tokenizer: Any, source: TraceSource | None = None) -> AgentRollout:
    from deep_math.prompts import load_examples

    settings = RolloutSettings(
        max_completion_length=cfg.train.max_completion_length,
        top_p=cfg.train.top_p,
        top_k=cfg.train.top_k,
        template=cfg.prompt.template,
        examples=load_examples(cfg.prompt.examples),
        seed=cfg.rollout.seed,
    )
    return AgentRollout(source or build_trace_source(cfg, tokenizer), tokenizer, settings)


# --- trainer ----------------------------------------------------------------------------------


def build_trainer(
    cfg: TrainingConfig,
    train_problems: list,
    model: Any = None,
    tokenizer: Any = None,
    source: TraceSource | None = None,
) -> Any:
    """A `DeepMathGRPOTrainer` ready to `train()`; model/tokenizer/source default from cfg."""
    from deep_math.training.trainer import DeepMathGRPOTrainer

    if model is None:
        model, tokenizer = load_policy(cfg)
    reward_funcs, reward_weights = build_rewards(cfg.rewards)
    rollout = build_rollout(cfg, tokenizer, source)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*rollout_func.*experimental.*")
        trainer = DeepMathGRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=build_grpo_args(cfg, reward_weights),
            train_dataset=build_dataset(train_problems),
            processing_class=tokenizer,
            peft_config=build_peft_config(cfg),
            rollout_func=rollout,
            temperature_schedule=cfg.temperature,
            lora_ref_sync=(
                (cfg.train.ref_model_mixup_alpha, cfg.train.ref_model_sync_steps)
                if cfg.lora.enabled and cfg.train.sync_ref_model
                else None
            ),
        )
    trainer.deep_math_rollout = rollout
    return trainer


def run_training(cfg: TrainingConfig) -> Path:
    """Train, save the final model (a peft adapter folder with LoRA) to train.output_dir, return it."""
    train, dev = load_train_problems(cfg)
    dev_path = write_dev_split(dev, cfg.train.output_dir)
    if dev_path:
        log.info("Held out %d dev problems in %s", len(dev), dev_path)
    trainer = build_trainer(cfg, train)
    # The newest complete checkpoint: an interrupted save is skipped (see checkpoints.py).
    checkpoint = last_complete_checkpoint(cfg.train.output_dir) if cfg.resume else None
    if cfg.resume and checkpoint is None:
        log.warning("resume=true but %s has no checkpoint; starting from scratch", cfg.train.output_dir)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        trainer.deep_math_rollout.close()
    out = Path(cfg.train.output_dir)
    trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(str(out))
        write_report(trainer.state.log_history, out)
    return out


def write_report(log_history: list, out: Path) -> None:
    """Training curves next to the model (deep_math/training/report.py). A failure here costs only
    the report, never the saved model: it is logged with the command that redoes it."""
    from deep_math.training.report import print_table, write_training_report

    try:
        paths = write_training_report(log_history, out)
    except Exception as exc:  # noqa: BLE001 - the model is saved; the report can be redone
        log.warning("No training report (%s); redo it with: python -m deep_math.training.report %s", exc, out)
        return
    print_table(log_history)
    log.info("Training curves: %s, %s, %s", paths["summary"], paths["log"], paths.get("plot", "(no plot)"))
