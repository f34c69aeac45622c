"""Helpers shared by the tests (and usable by anyone checking a command): the repo path, the
shared benchmark data, composing an entry script's Hydra config exactly as the script would
(without running it), the tiny model, an engine wrapper that records what it returned, and the
smoke reward.

    cfg = compose_entry("inference.py", ["+model.use_vllm=true", "hf_tag=HuggingFaceH4/MATH-500"])
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# The tiny random model (2 layers, hidden 64) lives in deep_math.training.tiny, next to the training
# code that scripts/gpu_smoke.sh also runs; re-exported here with the other test helpers.
from deep_math.training.tiny import tiny_config, tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = ("training.py", "inference.py", "evaluation.py")


def shared_data_dir() -> Path | None:
    """../shared/data next to the repo (or $DEEP_MATH_SHARED_DATA), where the benchmark files live
    that some tests check when present; None when absent."""
    env = os.environ.get("DEEP_MATH_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def entry_point(argv: list[str]) -> tuple[str, list[str]] | None:
    """(script, arguments) of a `python X.py ...` or `accelerate launch ... X.py ...` call."""
    for i, arg in enumerate(argv):
        if arg in ENTRY_SCRIPTS:
            return arg, argv[i + 1 :]
    return None


def compose_entry(script: str, args: list[str]) -> Any:
    """The validated schema object (TrainingConfig, InferenceConfig, EvaluationConfig) that `script`
    would build from the command-line `args` (Hydra overrides, `--config-name NAME` included)."""
    from deep_math.config_utils import to_schema

    name = script.removesuffix(".py")
    if "--config-name" in args:
        i = args.index("--config-name")
        name, args = args[i + 1], args[:i] + args[i + 2 :]
    if script == "evaluation.py":
        from deep_math.evaluation.cli import quote_list_overrides

        args = quote_list_overrides(args)
    raw = compose_raw(name, args)
    if script == "training.py":
        from deep_math.training.config import load_training_config

        return load_training_config(raw)
    if script == "inference.py":
        from deep_math.inference.config import LEGACY_KEYS, InferenceConfig

        return to_schema(raw, InferenceConfig, LEGACY_KEYS)
    from deep_math.evaluation.config import EvaluationConfig

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from evaluation import LEGACY  # the entry script's own table of the paper's extra keys

    return to_schema(raw, EvaluationConfig, LEGACY)


def compose_raw(name: str, args: list[str]) -> Any:
    """The raw Hydra config `configs/NAME.yaml` composed with the overrides `args`."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(name, overrides=args)


def compose_module(name: str, args: list[str]) -> Any:
    """The validated config that `python -m deep_math.training.NAME` (NAME: sft or mini_grpo) would
    build from the command-line `args` (Hydra overrides): SFTRunConfig or MiniGRPOConfig."""
    raw = compose_raw(name, args)
    if name == "sft":
        from deep_math.training.sft import load_sft_config

        return load_sft_config(raw)
    from deep_math.training.mini_grpo import load_mini_grpo_config

    return load_mini_grpo_config(raw)


def distinct_chars(completions: list[Any], **kwargs: Any) -> list[float]:
    """A reward for smoke runs of `training.py` on a random tiny model. The real rewards (accuracy,
    code_use) are 0 for every completion of an untrained random model, so every advantage is 0 and
    an optimizer step moves nothing; the fraction of distinct characters differs between random
    completions, so loss and gradients are non-zero. As an import path:

        python training.py ... '++rewards={deep_math.testing.distinct_chars:1.0}'
    """
    from deep_math.training.rewards import completion_text

    texts = [completion_text(c) for c in completions]
    return [len(set(t)) / max(len(t), 1) for t in texts]


class RecordingEngine:
    """Wraps an engine and records every result it returned, to check token ids exactly."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.name = inner.name
        self.tokenizer = inner.tokenizer
        self.results: list[Any] = []

    def generate(self, requests: list[Any]) -> list[Any]:
        out = self.inner.generate(requests)
        self.results.extend(out)
        return out

    def close(self) -> None:
        self.inner.close()


__all__ = [
    "ENTRY_SCRIPTS",
    "REPO",
    "RecordingEngine",
    "compose_entry",
    "compose_module",
    "compose_raw",
    "distinct_chars",
    "entry_point",
    "shared_data_dir",
    "tiny_config",
    "tiny_model_dir",
]
