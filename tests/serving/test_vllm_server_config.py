"""The agent server's command line and config file (no server started)."""

from __future__ import annotations

import pytest

from deep_math.config_utils import ConfigError
from deep_math.testing import REPO
from deep_math.vllm_serve_agent import parse_args

SHIPPED = str(REPO / "configs" / "vllm_agent_server.yaml")


def test_flags_override_the_config_file():
    cfg = parse_args(["--config", SHIPPED, "--engine", "transformers", "--max_steps", "7", "--port", "0"])
    assert (cfg.engine, cfg.agent.max_steps, cfg.port) == ("transformers", 7, 0)
    assert cfg.model == "Qwen/Qwen3-4B-Thinking-2507" and cfg.agent.max_agent_output == 5000  # from the file
    assert cfg.agent.max_steps == 7


def test_shipped_config_starts_with_its_command():
    assert (
        (REPO / "configs" / "vllm_agent_server.yaml")
        .read_text()
        .startswith("# python -m deep_math.vllm_serve_agent")
    )


def test_unknown_config_key_fails_listing_valid_ones(tmp_path):
    bad = tmp_path / "server.yaml"
    bad.write_text("max_step: 3\n")
    with pytest.raises(ConfigError, match=r"'max_step'.*Did you mean 'max_steps'.*Valid keys"):
        parse_args(["--config", str(bad)])


def test_data_parallel_needs_vllm():
    with pytest.raises(ConfigError, match="data_parallel_size 2 needs --engine vllm"):
        parse_args(["--engine", "transformers", "--data_parallel_size", "2"])


def test_engine_kwargs_are_json():
    cfg = parse_args(["--engine_kwargs", '{"gpu_memory_utilization": 0.8}'])
    assert cfg.engine_kwargs == {"gpu_memory_utilization": 0.8}


@pytest.mark.parametrize(("flag", "expected"), [("true", True), ("false", False), ("No", False), ("1", True)])
def test_boolean_flags_parse_as_booleans(flag, expected):
    """`--allow_degraded_network false` must be False (argparse's str would make it truthy)."""
    cfg = parse_args(["--engine", "transformers", "--allow_degraded_network", flag])
    assert cfg.agent.allow_degraded_network is expected


def test_a_boolean_flag_refuses_other_words(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--allow_degraded_network", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_the_transformers_engine_gets_the_server_settings_it_takes(monkeypatch):
    import deep_math.engines
    from deep_math.serving import build_server_engine

    built = {}
    monkeypatch.setattr(deep_math.engines, "build_engine", lambda name, **kwargs: built.update(kwargs))
    build_server_engine(parse_args(["--max_batch_size", "4", "--engine_kwargs", '{"batch_wait_ms": 1}']))
    assert built == {
        "model_name_or_path": None,
        "device": "auto",
        "dtype": "auto",
        "max_batch_size": 4,
        "batch_wait_ms": 1,  # --engine_kwargs win
    }


def test_a_misspelled_engine_kwarg_fails_before_the_model_loads():
    from deep_math.serving import build_server_engine

    with pytest.raises(ConfigError, match="'max_batch'. Did you mean 'max_batch_size'"):
        build_server_engine(parse_args(["--engine_kwargs", '{"max_batch": 4}']))
