"""The gated code reward (code use pays only with a successful snippet and a correct answer) and
the brevity reward (shorter correct traces earn more; wrong ones earn nothing)."""

from __future__ import annotations

import pytest

from deep_math.training.rewards import BREVITY_SCALE, brevity, build_rewards, code_use_gated

RIGHT = "<tool_call>\nprint(6 * 7)\n</tool_call>\n```output\n42\n```\nThe answer is \\boxed{42}."
WRONG = "<tool_call>\nprint(6 * 8)\n</tool_call>\n```output\n48\n```\nThe answer is \\boxed{48}."


def test_pays_only_correct_answers_with_successful_code():
    rewards = code_use_gated(
        [RIGHT, WRONG, RIGHT, RIGHT, "\\boxed{42}"],
        answer=["42"] * 5,
        tool_calls=[1, 1, 1, 2, 0],
        tool_errors=[0, 0, 1, 1, 0],
        tool_timeouts=[0, 0, 0, 0, 0],
    )
    # right+code, wrong+code, right but the only snippet failed, right after a retry, right without code
    assert rewards == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_failed_traces_are_unscored():
    assert code_use_gated([RIGHT], answer=["42"], tool_calls=[1], trace_error=["engine died"]) == [None]


def test_registered_by_name_and_ranks_right_above_wrong():
    funcs, weights = build_rewards({"accuracy": 0.1, "code_use_gated": 1.0})
    cols = {"answer": ["42", "42"], "tool_calls": [1, 0], "tool_errors": [0, 0], "tool_timeouts": [0, 0]}
    completions = [WRONG, "\\boxed{42}"]  # wrong with code, right without code
    totals = [
        sum(w * f(completions, **cols)[i] for f, w in zip(funcs, weights, strict=True)) for i in range(2)
    ]
    assert totals[1] > totals[0]  # with the paper's code_use it would be 1.0 vs 0.1


def test_brevity_pays_shorter_correct_traces_more_and_wrong_ones_nothing():
    rewards = brevity(
        [RIGHT, RIGHT, WRONG, RIGHT, RIGHT],
        answer=["42"] * 5,
        model_tokens=[40, 80, 10, 2 * BREVITY_SCALE, 60],
        trace_error=[None, None, None, None, "engine died"],
    )
    assert rewards[0] == pytest.approx(1 - 40 / BREVITY_SCALE)
    assert rewards[0] > rewards[1] > 0.0
    assert rewards[2] == 0.0  # short but wrong
    assert rewards[3] == 0.0  # floored, never negative
    assert rewards[4] is None


def test_brevity_never_outranks_correctness_in_the_short_recipe_weights():
    funcs, weights = build_rewards({"accuracy": 0.1, "code_use_gated": 1.0, "brevity": 0.5})
    cols = {
        "answer": ["42", "42", "42"],
        "tool_calls": [1, 1, 1],
        "tool_errors": [0, 0, 0],
        "tool_timeouts": [0, 0, 0],
        "model_tokens": [200, 50, 5],
    }
    completions = [RIGHT, RIGHT, WRONG]  # long right, short right, very short wrong
    totals = [
        sum(w * f(completions, **cols)[i] for f, w in zip(funcs, weights, strict=True)) for i in range(3)
    ]
    assert totals[1] > totals[0] > totals[2]


def test_brevity_without_the_rollout_column_names_the_fix():
    with pytest.raises(ValueError, match="model_tokens"):
        brevity([RIGHT], answer=["42"])
