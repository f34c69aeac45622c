"""The original DeepMath README's commands (tests/e2e/paper_commands.sh) get past configuration and
argument parsing here. Where a command would next need the hub or a GPU library, the seam is stubbed
and records what would have reached it: the engine builder (vLLM), the problem loader (the hub)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from deep_math.config_utils import ConfigError
from deep_math.data import Problem
from deep_math.testing import REPO, compose_entry, entry_point

COMMANDS = Path(__file__).with_name("paper_commands.sh")
QWEN = "Qwen/Qwen3-4B-Thinking-2507"


def paper_commands() -> list[list[str]]:
    text = COMMANDS.read_text().replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def command(prefix: str, contains: str = "") -> list[str]:
    found = [c for c in paper_commands() if " ".join(c).startswith(prefix) and contains in " ".join(c)]
    assert len(found) == 1, f"expected one paper command starting with {prefix!r} containing {contains!r}"
    return found[0]


def test_the_file_holds_the_six_commands():
    assert [c[:3] for c in paper_commands()] == [
        ["python", "-m", "deep_math.vllm_serve_agent"],
        ["accelerate", "launch", "--config_file"],
        ["python", "inference.py", "+model.use_vllm=true"],
        ["python", "inference.py", "+model.use_vllm=true"],
        ["python", "inference.py", "+model.use_vllm=true"],
        [
            "python",
            "evaluation.py",
            "generated_file=baseline-MATH500.jsonl,agent-MATH500.jsonl,trained-agent-MATH500.jsonl",
        ],
    ]


class ReachedSeam(Exception):
    """Raised by a stub where the real command would need the network or a GPU library."""


def test_agent_server_command_parses_and_reaches_the_vllm_engine(monkeypatch):
    import deep_math.engines
    from deep_math.vllm_serve_agent import build_server_engine, parse_args

    monkeypatch.chdir(REPO)
    cfg = parse_args(command("python -m deep_math.vllm_serve_agent")[3:])
    assert (cfg.model, cfg.engine, cfg.agent.max_steps, cfg.agent.max_agent_output) == (
        QWEN,
        "vllm",
        50,
        5000,
    )
    built = {}

    def fake_build_engine(name, **kwargs):
        built.update(name=name, **kwargs)
        raise ReachedSeam

    monkeypatch.setattr(deep_math.engines, "build_engine", fake_build_engine)
    with pytest.raises(ReachedSeam):
        build_server_engine(cfg)
    assert built == {
        "name": "vllm",
        "model_name_or_path": QWEN,
        "tensor_parallel_size": 1,
        "data_parallel_size": 6,
        "enable_prefix_caching": True,  # the paper's server config
        "max_model_len": 20000,
    }


def test_trainer_command_parses_and_the_bare_default_names_the_paper_recipe_on_gpu():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    from deep_math.training.config import refuse_bare_demo_on_gpu

    argv = command("accelerate launch")
    args = launch_command_parser().parse_args(argv[2:])
    assert (args.num_processes, args.training_script, args.training_script_args) == (2, "training.py", [])
    assert load_config_from_file(str(REPO / args.config_file)).deepspeed_config["zero_stage"] == 2
    script, overrides = entry_point(argv)
    cfg = compose_entry(script, overrides)  # the CPU demo config composes and validates
    assert cfg.model.model_name_or_path is None and cfg.rollout.backend == "policy"
    refuse_bare_demo_on_gpu("training", overrides, cuda_available=False)  # CPU: trains the demo
    with pytest.raises(ConfigError, match="--config-name training_paper rollout.backend=server"):
        refuse_bare_demo_on_gpu("training", overrides, cuda_available=True)
    refuse_bare_demo_on_gpu("training", ["train.max_steps=2"], cuda_available=True)  # chosen on purpose
    refuse_bare_demo_on_gpu("training_paper", [], cuda_available=True)
    paper = compose_entry("training.py", ["--config-name", "training_paper", "rollout.backend=server"])
    assert paper.model.model_name_or_path == QWEN


@pytest.mark.parametrize("contains", ["baseline-MATH500", "generated_file=agent-MATH500", "trained-agent"])
def test_inference_commands_reach_the_vllm_engine(contains, monkeypatch, tmp_path):
    import deep_math.data
    import deep_math.engines
    from deep_math.inference.run import run_inference

    script, overrides = entry_point(command("python inference.py", contains))
    cfg = compose_entry(script, overrides)
    loaded, built = {}, {}

    def fake_load_problems(tag, **kwargs):
        loaded.update(tag=tag, **kwargs)
        return [Problem(id="0", problem="1+1?", answer="2")]

    def fake_build_engine(name, **kwargs):
        built.update(name=name, **kwargs)
        raise ReachedSeam

    monkeypatch.setattr(deep_math.data, "load_problems", fake_load_problems)
    monkeypatch.setattr(deep_math.engines, "build_engine", fake_build_engine)
    monkeypatch.chdir(tmp_path)  # the generated file is opened (and resumed) before the engine
    with pytest.raises(ReachedSeam):
        run_inference(cfg)
    assert loaded["tag"] == "HuggingFaceH4/MATH-500"
    assert built["name"] == "vllm" and built["model_name_or_path"] == QWEN
    g = cfg.model.generation
    if contains == "baseline-MATH500":
        assert not cfg.model.math_agent and cfg.model.template == "baseline"
        assert (g.max_new_tokens, g.do_sample, g.sampling_temperature()) == (20000, True, 0.6)
    else:
        assert cfg.model.math_agent and cfg.model.examples == "deep_math/fewshot.txt"
        assert (cfg.agent.max_steps, cfg.agent.max_agent_output, g.max_new_tokens) == (50, 20000, 3000)
    if contains == "trained-agent":
        assert built["lora_path"] == "/PATH/TO/CHECKPOINT" and built["max_lora_rank"] == 32


def test_do_sample_false_is_greedy_and_vllm_params_need_the_vllm_engine():
    cfg = compose_entry("inference.py", ["model.generation.do_sample=false"])
    assert cfg.model.generation.sampling_temperature() == 0.0
    with pytest.raises(ConfigError, match=r"\+model.use_vllm=true"):
        compose_entry("inference.py", ["+model.vllm_params.max_lora_rank=32"])


def test_evaluation_command_parses_three_files():
    script, overrides = entry_point(command("python evaluation.py"))
    cfg = compose_entry(script, overrides)
    assert cfg.generated_files == [
        "baseline-MATH500.jsonl",
        "agent-MATH500.jsonl",
        "trained-agent-MATH500.jsonl",
    ]
