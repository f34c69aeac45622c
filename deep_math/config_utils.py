"""Validate Hydra configs against dataclass schemas with errors that name the fix.

Hydra composes YAML; `to_schema` then converts the composed `DictConfig` into the entry point's
dataclass. Unknown keys fail with the list of valid ones (and a "did you mean"), legacy keys from
the paper's commands are mapped onto the new schema with a logged message.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says how to fix it."""


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_name_error(kind: str, name: str, choices: list[str]) -> ConfigError:
    """`Unknown engine 'vlm'. Did you mean 'vllm'? Available: [...]`"""
    return ConfigError(f"Unknown {kind} '{name}'.{_suggest(name, choices)} Available: {sorted(choices)}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def build_dataclass(
    cls: type, data: Mapping[str, Any] | None, path: str = "", aliases: tuple[str, ...] = ()
) -> Any:
    """Recursively build dataclass `cls` from a plain mapping; unknown keys raise ConfigError.
    aliases: dotted legacy keys that are also accepted spellings ("model.max_steps"), offered as
    did-you-mean suggestions next to the schema's own names."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = path or cls.__name__
        spellings = list(fields) + [a.rpartition(".")[2] for a in aliases if a.rpartition(".")[0] == path]
        msgs = [f"'{k}'{_suggest(k, spellings)}" for k in unknown]
        raise ConfigError(
            f"Unknown config key(s) in {where}: {', '.join(msgs)}. Valid keys: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = _unwrap_optional(hints[name])
        sub = f"{path}.{name}" if path else name
        if _is_dataclass_type(tp) and isinstance(value, Mapping):
            kwargs[name] = build_dataclass(tp, value, sub, aliases)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid value in {path or cls.__name__}: {exc}") from exc


def apply_legacy(data: dict[str, Any], legacy: Mapping[str, Any]) -> dict[str, Any]:
    """Map legacy dotted keys onto the schema.

    `legacy` maps an old dotted key to either a new dotted key (value moved as is) or a callable
    `(value, data) -> None` that edits `data` in place. Each mapping is logged once.
    """
    for old, new in legacy.items():
        parts = old.split(".")
        parent = data
        for p in parts[:-1]:
            parent = parent.get(p) if isinstance(parent, dict) else None
            if parent is None:
                break
        if not isinstance(parent, dict) or parts[-1] not in parent:
            continue
        value = parent.pop(parts[-1])
        if callable(new):
            new(value, data)
            log.info("Legacy config key '%s=%s' mapped onto the current schema.", old, value)
        else:
            _set_dotted(data, new, value)
            log.info("Legacy config key '%s' is now '%s' (set to %r).", old, new, value)
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        data = data.setdefault(p, {})
    data[parts[-1]] = value


def to_schema(cfg: Any, cls: type, legacy: Mapping[str, Any] | None = None) -> Any:
    """Convert a Hydra DictConfig (or a mapping) into dataclass `cls`, dropping Hydra's own node."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data.pop("hydra", None)
    if legacy:
        data = apply_legacy(data, legacy)
    return build_dataclass(cls, data, aliases=tuple(legacy or ()))
