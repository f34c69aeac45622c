"""Every shipped config composes against its schema, and starts with the command that uses it.

A new YAML under configs/ fails here until it is added to LOADERS: a config nothing checks is a
config that breaks unnoticed."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from deep_math.testing import REPO, compose_entry, compose_raw

CONFIGS = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))


def entry(script: str, *required: str):
    """The entry script's composition; `required`: overrides the config leaves to the command line."""
    return lambda name: compose_entry(script, ["--config-name", name, *required])


def module_loader(module: str, loader: str):
    return lambda name: getattr(importlib.import_module(module), loader)(compose_raw(name, []))


def server(name: str):
    from deep_math.serving.config import parse_args

    return parse_args(["--config", str(REPO / "configs" / f"{name}.yaml")])


def accelerate_config(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(REPO / "configs" / f"{name}.yaml"))


def slurm_launcher(name: str):
    if importlib.util.find_spec("hydra_plugins") is None or (
        importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None
    ):
        pytest.skip("hydra-submitit-launcher is not installed (pip install -e '.[slurm]')")
    return compose_entry("inference.py", ["hydra/launcher=slurm"])


LOADERS = {
    "evaluation.yaml": entry("evaluation.py", "generated_file=outputs/a.jsonl"),
    "inference.yaml": entry("inference.py"),
    "training.yaml": entry("training.py"),
    "training_paper.yaml": entry("training.py"),
    "sft.yaml": module_loader("deep_math.training.sft", "load_sft_config"),
    "mini_grpo.yaml": module_loader("deep_math.training.mini_grpo", "load_mini_grpo_config"),
    "vllm_agent_server.yaml": server,
    "vllm_agent_server_4B.yaml": server,
    "zero2.yaml": accelerate_config,
    "hydra/launcher/slurm.yaml": slurm_launcher,
}


@pytest.mark.parametrize("path", CONFIGS)
def test_every_shipped_config_composes_against_its_schema(path):
    assert path in LOADERS, f"configs/{path} is checked by nothing: add its loader to LOADERS in {__file__}"
    assert (REPO / "configs" / path).read_text().startswith("# "), (
        f"configs/{path} must start with its command"
    )
    assert LOADERS[path](path.removesuffix(".yaml").split("/")[-1]) is not None
