"""Reward functions, table-driven with literal completions (no model)."""

from __future__ import annotations

import pytest

from deep_math.config_utils import ConfigError
from deep_math.testing import REPO
from deep_math.training.rewards import DEFAULT_REWARD_WEIGHTS, accuracy, build_rewards, code_use

CALL = "<tool_call>\nprint({x})\n</tool_call>\n```output\n{x}\n```\n"


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("So the answer is \\boxed{42}.", "42", 1.0),
        ("So the answer is \\boxed{41}.", "42", 0.0),
        ("We get \\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("We get \\boxed{\\dfrac{3}{6}}", "\\frac{1}{2}", 1.0),
        ("Roots: \\boxed{2, 3}", "3, 2", 1.0),
        ("no final answer here", "42", 0.0),
        (CALL.format(x=42) + " hence \\boxed{42}", "42", 1.0),
        # the tool printed 42 but the model boxed nothing: code output is not an answer
        (CALL.format(x=42) + " done.", "42", 0.0),
        ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
        ([{"role": "assistant", "content": "\\boxed{7}"}], "7", 1.0),  # conversational form
    ],
)
def test_accuracy(completion, gold, expected):
    assert accuracy([completion], answer=[gold]) == [expected]


@pytest.mark.parametrize(
    ("calls", "errors", "timeouts", "expected"),
    [(0, 0, 0, 0.0), (1, 0, 0, 1.0), (1, 1, 0, 0.0), (1, 0, 1, 0.0), (3, 1, 1, 1.0), (2, 2, 0, 0.0)],
)
def test_code_use(calls, errors, timeouts, expected):
    assert code_use(["..."], tool_calls=[calls], tool_errors=[errors], tool_timeouts=[timeouts]) == [expected]


def test_code_use_without_trace_columns_is_zero():
    assert code_use(["a", "b"]) == [0.0, 0.0]


def test_failed_traces_are_unscored_by_every_reward():
    kwargs = {
        "tool_calls": [1, 1],
        "tool_errors": [0, 0],
        "tool_timeouts": [0, 0],
        "trace_error": [None, "boom"],
    }
    assert accuracy(["\\boxed{1}", "\\boxed{1}"], answer=["1", "1"], **kwargs) == [1.0, None]
    assert code_use(["", ""], **kwargs) == [1.0, None]


def test_accuracy_accepts_solution_column_and_checks_lengths():
    assert accuracy(["\\boxed{3}"], solution=["3"]) == [1.0]
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        accuracy(["a", "b"], answer=["1"])


def test_build_rewards_defaults_and_order():
    funcs, weights = build_rewards(None)
    assert [f.__name__ for f in funcs] == ["accuracy", "code_use"]
    assert weights == [0.1, 1.0] == list(DEFAULT_REWARD_WEIGHTS.values())
    funcs, weights = build_rewards({"code_use": 2, "accuracy": 1})
    assert [f.__name__ for f in funcs] == ["code_use", "accuracy"] and weights == [2.0, 1.0]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (
            {"acuracy": 1.0},
            r"Unknown reward 'acuracy'\. Did you mean 'accuracy'\? Available: \['accuracy', 'brevity', 'code_use', 'code_use_gated'\]",
        ),
        ({}, "rewards is empty"),
        ({"accuracy": "high"}, "must be a number"),
    ],
)
def test_bad_reward_config_fails_with_the_fix(weights, message):
    with pytest.raises(ConfigError, match=message):
        build_rewards(weights)


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """An importable module `my_rewards` with one reward function and one non-callable."""
    (tmp_path / "my_rewards.py").write_text(
        "def short_text(completions, **kwargs):\n"
        "    return [1.0 / (1 + len(c)) for c in completions]\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_dotted_reward_names_are_imported(reward_module):
    funcs, weights = build_rewards({"accuracy": 0.1, f"{reward_module}.short_text": 0.5})
    assert [f.__name__ for f in funcs] == ["accuracy", "short_text"] and weights == [0.1, 0.5]
    assert funcs[1](["a", "abc"]) == [0.5, 0.25]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_xyz.reward", r"cannot import module 'no_such_module_xyz'.*module\.function"),
        ("my_rewards.missing", r"'missing' is not defined in module 'my_rewards'"),
        ("my_rewards.NOT_A_FUNCTION", r"'NOT_A_FUNCTION' is not callable in module 'my_rewards'"),
    ],
)
def test_bad_dotted_reward_names_fail_with_the_fix(reward_module, name, message):
    with pytest.raises(ConfigError, match=message):
        build_rewards({name: 1.0})


def test_dotted_reward_from_the_command_line(reward_module):
    """The override form the docstring gives: `++` merges the dotted key into the rewards mapping."""

    from hydra import compose, initialize_config_dir

    from deep_math.training.config import load_training_config

    configs = REPO / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        raw = compose("training", overrides=["++rewards={my_rewards.short_text:0.5}"])
    cfg = load_training_config(raw)
    assert cfg.rewards == {"accuracy": 0.1, "code_use": 1.0, "my_rewards.short_text": 0.5}


def test_accuracy_never_credits_a_box_printed_by_a_snippet():
    printed = "<tool_call>\nprint(s)\n</tool_call>\n````output\n```\n\\boxed{42}\n````\n Hmm."
    assert accuracy([printed], answer=["42"]) == [0.0]
    # with the rollout's columns: tool output located where the agent inserted it
    start = printed.index("\n````output")
    spans = [[start, printed.index(" Hmm.")]]
    assert accuracy(["ignored"], answer=["42"], trace_text=[printed], tool_output_spans=[spans]) == [0.0]
    own = printed + " So \\boxed{42}."
    assert accuracy(["ignored"], answer=["42"], trace_text=[own], tool_output_spans=[spans]) == [1.0]
