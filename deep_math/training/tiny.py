"""A tiny random model and a fast config, for the training tests and `scripts/gpu_smoke.sh`.

The model is a 2-layer, hidden-64 Llama with the embedded tokenizer's vocabulary: GRPO steps on it
take seconds on CPU, so recipe tests exercise the real trainer, LoRA, rollouts and checkpoints.
"""

from __future__ import annotations

from pathlib import Path


def tiny_model_dir(tokenizer, path: Path) -> Path:
    """A 2-layer, hidden-64 Llama with the embedded tokenizer's vocabulary, saved to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (path / "config.json").is_file():
        return path
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(model_dir: Path, output_dir: Path, **overrides):
    """A TrainingConfig for a fast 2-step CPU run on `model_dir` (no few-shot, short traces)."""
    from deep_math.config_utils import build_dataclass
    from deep_math.training.config import TrainingConfig

    data = {
        "model": {"model_name_or_path": str(model_dir)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"limit": 2},
        "prompt": {"examples": None},
        "agent": {"max_steps": 2, "max_agent_output": 48, "max_concurrency": 8, "sandbox_timeout": 5.0},
        "temperature": {"temp_a": 1.2, "temp_a_step": 0, "temp_b": 0.7, "temp_b_step": 2},
        "train": {
            "output_dir": str(output_dir),
            "max_steps": 2,
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "num_generations": 4,
            "max_completion_length": 48,
            "save_steps": 1,
            "use_cpu": True,
            "bf16": False,
        },
    }
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return build_dataclass(TrainingConfig, data)


if __name__ == "__main__":  # python -m deep_math.training.tiny PATH (scripts/gpu_smoke.sh, offline_bundle.sh)
    import sys

    from deep_math.models import load_tokenizer

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m deep_math.training.tiny PATH")
    tiny_model_dir(load_tokenizer(None), Path(sys.argv[1]))
