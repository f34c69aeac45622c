"""Accuracy against token budget: a hand-built file against hand-computed values at each budget."""

from __future__ import annotations

import json

import pytest

from deep_math.evaluation.budget import answer_position, budget_curve
from deep_math.evaluation.metrics import MajorityAtK
from deep_math.evaluation.pool import GradingPool
from deep_math.evaluation.records import Sample
from deep_math.evaluation.run import evaluate_file

# A trace of 140 characters: 100 model characters and one 40-character output block.
#   "b"*50 | "```output\n" + "9"*26 + "\n```" (40) | 50 more model characters
OUTPUT_BLOCK = "```output\n" + "9" * 26 + "\n```"
BOX_AT_END = "b" * 50 + OUTPUT_BLOCK + "c" * 41 + r"\boxed{5}"
BOX_IN_MIDDLE = "b" * 50 + OUTPUT_BLOCK + r"\boxed{5}" + "c" * 41


def test_answer_position_hand_computed():
    # box at the very end: all 200 model and all 80 tool tokens come before it
    assert answer_position(Sample(BOX_AT_END, model_tokens=200, tool_tokens=80), True) == 280
    # box ends at character 99: 59 of 100 model characters (-> 200 * 0.59 = 118 tokens) and the
    # whole output block (80 tokens) come before it
    assert answer_position(Sample(BOX_IN_MIDDLE, model_tokens=200, tool_tokens=80), True) == 198
    # 99 of 100 model characters, no tool: ceil(1000 * 0.99) = 990
    assert (
        answer_position(Sample("a" * 90 + r"\boxed{7}" + ".", model_tokens=1000, tool_tokens=0), True) == 990
    )
    # unboxed: the answer is known when the trace ends
    assert answer_position(Sample("Three trucks.", model_tokens=50, tool_tokens=7), True) == 57
    assert answer_position(Sample(r"\boxed{}", model_tokens=5, tool_tokens=0), False) is None


def _sample(text, model, tool=0):
    return {
        "text": text,
        "model_tokens": model,
        "tool_tokens": tool,
        "tool_calls": 0,
        "finish_reason": "answer",
    }


ROWS = [
    # P1 (gold 7): both right, boxed at 990 and at ceil(3000 * 0.99) = 2970 tokens
    {
        "id": "p1",
        "target": "7",
        "samples": [
            _sample("a" * 90 + r"\boxed{7}" + ".", 1000),
            _sample("a" * 90 + r"\boxed{7}" + ".", 3000),
        ],
    },
    # P2 (gold 5): right at 198 (box mid-trace, tool tokens before it), wrong at 400 (end)
    {
        "id": "p2",
        "target": "5",
        "samples": [_sample(BOX_IN_MIDDLE, 200, 80), _sample("d" * 91 + r"\boxed{4}", 400)],
    },
    # P3 (gold 3): unboxed answer in words at 50 (trace end); the other sample has no answer
    {
        "id": "p3",
        "target": "3",
        "samples": [_sample("Three trucks will be needed.", 50), _sample("I am not sure.", 5000)],
    },
    # P4 (gold 2): cut off while thinking (no answer); right at 1500 + 500 = 2000 (end)
    {
        "id": "p4",
        "target": "2",
        "samples": [
            _sample("<think>still thinking " + r"\boxed{2}", 300),
            _sample("e" * 10 + OUTPUT_BLOCK + "f" * 21 + r"\boxed{2}", 1500, 500),
        ],
    },
]

# budget -> (maj@2, mean@2, answered share), counted by hand from the positions above:
#   100:  P3 only (one sample right, votes alone)                 maj 1/4, mean 0.5/4
#   500:  + P2 (198 right, 400 wrong: a tie, the earlier right)    maj 2/4, mean 1/4
#   1000: + P1 (990)                                              maj 3/4, mean 1.5/4
#   2000: + P4 (2000, inclusive)                                  maj 4/4, mean 2/4
#   3000: + P1's second sample (2970)                             maj 4/4, mean 2.5/4
EXPECTED = {
    100: (0.25, 0.125, 0.125),
    500: (0.5, 0.25, 0.375),
    1000: (0.75, 0.375, 0.5),
    2000: (1.0, 0.5, 0.625),
    3000: (1.0, 0.625, 0.75),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("budget") / "gen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with GradingPool(workers=0) as pool:
        return evaluate_file(path, pool, [MajorityAtK(bootstrap=0)], budgets=[100, 500])


@pytest.mark.parametrize("budget", sorted(EXPECTED))
def test_budget_table_matches_hand_computed(results, budget):
    report = budget_curve(results.results, table=[budget])
    row = report["table"][budget]
    assert (row["maj"], row["mean"], row["answered"]) == EXPECTED[budget]


def test_no_cut_equals_unbudgeted_accuracy(results):
    report = results.budget
    assert report["k"] == 2 and report["longest_trace"] == 5000
    assert report["no_cut"]["maj"] == results.values["maj@2"] == 1.0
    assert list(report["table"]) == [100, 500]
    budgets = [p["budget"] for p in report["curve"]]
    assert budgets == sorted(budgets) and budgets[-1] >= 5000
    maj = [p["maj"] for p in report["curve"]]
    assert maj == sorted(maj)  # more budget never loses an answer


def test_budget_plot_written(results, tmp_path):
    from deep_math.evaluation.budget import plot_curves

    png = tmp_path / "b.png"
    plot_curves([("gen", results.budget)], png)
    assert png.read_bytes()[:4] == b"\x89PNG"
