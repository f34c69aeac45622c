"""Generation engines, chosen by name; each is imported only when chosen (vLLM included).

    engine = build_engine("transformers")            # embedded SmolLM2 on CPU
    engine = build_engine("vllm", model_name_or_path="Qwen/Qwen3-4B", tensor_parallel_size=2)
    engine = build_engine("server", base_url="http://gpu-node:8000", tokenizer="Qwen/Qwen3-4B")

The protocol lives in `deep_math.engines.base`.
"""

from __future__ import annotations

import importlib
from typing import Any

from deep_math.config_utils import unknown_name_error
from deep_math.engines.base import Engine, EngineError, GenRequest, GenResult, SamplingParams

ENGINES: dict[str, str] = {
    "transformers": "deep_math.engines.transformers_engine:TransformersEngine",
    "vllm": "deep_math.engines.vllm:VLLMEngine",
    "server": "deep_math.engines.server_engine:ServerEngine",
    "scripted": "deep_math.engines.scripted:ScriptedEngine",
}


def engine_class(name: str) -> type:
    """The engine class registered under `name` (imports its module)."""
    if name not in ENGINES:
        raise unknown_name_error("engine", name, list(ENGINES))
    module_name, class_name = ENGINES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_engine(name: str, **kwargs: Any) -> Engine:
    """Construct the engine registered under `name` with `kwargs` (its constructor's arguments)."""
    return engine_class(name)(**kwargs)


__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "GenRequest",
    "GenResult",
    "SamplingParams",
    "build_engine",
    "engine_class",
]
