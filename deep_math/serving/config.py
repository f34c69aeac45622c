"""The agent server's settings: `ServerConfig` (configs/vllm_agent_server*.yaml) and its command line.

Flags override the --config YAML, which overrides the defaults; unknown keys fail and list the
valid ones. The flag names are TRL `vllm-serve`'s where they exist (--tensor_parallel_size, ...).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from deep_math.agent.config import AgentConfig, flat_agent_keys
from deep_math.config_utils import ConfigError, _suggest, apply_legacy, build_dataclass

PROTOCOL_VERSION = 1
HANDSHAKE_KEYS = ("max_steps", "max_agent_output")


@dataclass
class ServerConfig:
    """model: null -> the embedded SmolLM2. engine: transformers | vllm (| scripted in tests).
    tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len,
    enable_prefix_caching: vLLM's settings of the same names, as TRL's `vllm-serve` takes them (vllm
    only; None keeps vLLM's default). engine_kwargs: passed to the engine as is. agent: the agent
    loop's settings, one schema with training and inference (flat flags such as --max_steps and flat
    YAML keys set its fields)."""

    model: str | None = None
    engine: str = "transformers"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    dtype: str = "auto"
    agent: AgentConfig = field(default_factory=AgentConfig)
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool | None = None
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.engine != "vllm":
            defaults = {"tensor_parallel_size": 1, "data_parallel_size": 1}
            vllm_only = [
                f"{k} {v}"
                for k, v in self.vllm_settings().items()
                if defaults.get(k, v) != v or k not in defaults
            ]
            if vllm_only:
                raise ValueError(f"{', '.join(vllm_only)} needs --engine vllm (got {self.engine})")

    def vllm_settings(self) -> dict[str, Any]:
        """The vLLM engine's own settings that are set (TP and DP always)."""
        names = ("gpu_memory_utilization", "max_model_len", "enable_prefix_caching")
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "data_parallel_size": self.data_parallel_size,
            **{name: getattr(self, name) for name in names if getattr(self, name) is not None},
        }


def _flag(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    """Flags override the --config YAML, which overrides the ServerConfig defaults. Each AgentConfig
    field is a flat flag (--max_steps) and may be a flat YAML key; both land in `agent`."""
    parser = argparse.ArgumentParser(
        prog="python -m deep_math.vllm_serve_agent", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config", help="YAML file with ServerConfig keys (e.g. configs/vllm_agent_server.yaml)"
    )
    for f in [*fields(ServerConfig), *fields(AgentConfig)]:
        if f.name == "agent":
            continue
        if f.name == "engine_kwargs":
            parser.add_argument("--engine_kwargs", type=json.loads, help="JSON object passed to the engine")
            continue
        kind = {"int": int, "float": float, "bool": _flag}.get(str(f.type).replace(" | None", ""), str)
        parser.add_argument(f"--{f.name}", type=kind, default=None)
    args = vars(parser.parse_args(argv))
    data: dict[str, Any] = {}
    config_path = args.pop("config")
    if config_path:
        import yaml

        data = yaml.safe_load(Path(config_path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{config_path} must hold a mapping of ServerConfig keys")
        known = [f.name for f in fields(ServerConfig)] + list(flat_agent_keys())
        unknown = [f"'{key}'{_suggest(key, known)}" for key in data if key not in known]
        if unknown:
            raise ConfigError(
                f"Unknown config key(s) in {config_path}: {', '.join(unknown)}. Valid keys: {sorted(known)}"
            )
    data = apply_legacy(data, flat_agent_keys())
    flags = apply_legacy({k: v for k, v in args.items() if v is not None}, flat_agent_keys())
    data.setdefault("agent", {}).update(flags.pop("agent", {}))
    data.update(flags)
    return build_dataclass(ServerConfig, data)
