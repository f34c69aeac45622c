"""Reward functions, table-driven with literal completions (no model)."""

from __future__ import annotations

import pytest

from deep_math.config_utils import ConfigError
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
            r"Unknown reward 'acuracy'\. Did you mean 'accuracy'\? Available: \['accuracy', 'code_use'\]",
        ),
        ({}, "rewards is empty"),
        ({"accuracy": "high"}, "must be a number"),
    ],
)
def test_bad_reward_config_fails_with_the_fix(weights, message):
    with pytest.raises(ConfigError, match=message):
        build_rewards(weights)
