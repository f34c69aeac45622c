"""The gated code reward: code use pays only with a successful snippet and a correct answer."""

from __future__ import annotations

from deep_math.training.rewards import build_rewards, code_use_gated

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
