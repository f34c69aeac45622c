"""Generation engines, chosen by name; each is imported only when chosen (vLLM included).

    engine = build_engine("transformers")            # embedded SmolLM2 on CPU
    engine = build_engine("vllm", model_name_or_path="Qwen/Qwen3-4B", tensor_parallel_size=2)
    engine = build_engine("server", base_url="http://gpu-node:8000", tokenizer="Qwen/Qwen3-4B")

A config that holds the settings of several engines (inference's model.*, the server's flags)
hands each engine its own with `engine_kwargs`; `check_engine_options` rejects a misspelled option
before a model loads. The protocol lives in `deep_math.engines.base`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from deep_math.config_utils import unknown_name_error
from deep_math.engines.base import Engine, EngineError, GenRequest, GenResult, SamplingParams

ENGINES: dict[str, str] = {
    "transformers": "deep_math.engines.transformers:TransformersEngine",
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


def _constructor_options(name: str) -> tuple[list[str], bool]:
    """The keyword arguments the constructor of engine `name` names, and whether it also takes
    **kwargs. Read from the signature, so the list cannot drift from the code; the vLLM engine
    imports vllm only when constructed, so reading its signature does not import vllm."""
    parameters = inspect.signature(engine_class(name)).parameters.values()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [p.name for p in parameters if p.kind in keyword]
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def engine_kwargs(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that the constructor of engine `name` names, for a config shared by several
    engines: each takes its own settings and ignores the others' (the transformers engine drops
    tensor_parallel_size, vLLM drops device). Options an engine would only forward through its
    **kwargs (vLLM's engine_args) are not guessed from a shared config: pass those explicitly."""
    named, _ = _constructor_options(name)
    return {key: value for key, value in options.items() if key in named}


def check_engine_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ConfigError for an option that engine `name` does not take, with a did-you-mean and
    the valid names: a typo in user-given engine options fails here, not as a TypeError after the
    config is loaded. An engine that takes **kwargs accepts any option (vLLM hands them to
    AsyncEngineArgs, which names its own unknown ones)."""
    named, takes_any = _constructor_options(name)
    if takes_any:
        return
    for key in options:
        if key not in named:
            raise unknown_name_error(f"{name} engine option", key, named)


__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "GenRequest",
    "GenResult",
    "SamplingParams",
    "build_engine",
    "check_engine_options",
    "engine_class",
    "engine_kwargs",
]
