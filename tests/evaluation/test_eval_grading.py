"""Answer extraction and grading: table-driven cases, the pool's hostile-input handling, MATH-500."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from deep_math.evaluation.extract import extract_answer
from deep_math.evaluation.grading import grade_answer, group_answers, is_correct
from deep_math.evaluation.pool import GradingPool, grade_many
from deep_math.testing import shared_data_dir

TOOL = "<tool_call>\nimport sympy\nprint(sympy.Rational(1, 3))\n</tool_call>\n```output\n{out}\n```\n"

EXTRACT_CASES = [
    ("plain box", r"so \boxed{42}.", "42"),
    ("last box wins", r"\boxed{1} then \boxed{2}", "2"),
    ("nested braces", r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),
    ("set braces", r"\boxed{\{1,2\}}", r"\{1,2\}"),
    ("boxed space", r"answer \boxed 5 done", "5"),
    ("boxed command", r"answer $\boxed\frac14$", r"\frac14"),
    ("fbox", r"\fbox{7}", "7"),
    (
        "box in tool code ignored",
        r"x \boxed{3}" + TOOL.format(out="1/3").replace("import", r"print('\\boxed{9}')"),
        "3",
    ),
    ("box in tool output ignored", r"x \boxed{3} " + TOOL.format(out=r"\boxed{9}"), "3"),
    ("only box in tool output", "x " + TOOL.format(out=r"\boxed{9}"), None),
    ("after think counts", r"<think>maybe \boxed{1}</think> final \boxed{2}", "2"),
    ("only thinking", r"<think>I think \boxed{1} but", None),
    ("thinking closed, no answer", r"<think>\boxed{1}</think> I am not sure.", None),
    ("empty box", r"\boxed{}", None),
    ("truncated box", r"\boxed{\frac{1}{2", None),
    ("truncated tool call", r"\boxed{5} <tool_call>print('\boxed{6}')", "5"),
    ("fallback after tools", "x " + TOOL.format(out="7") + "The answer is $7$.", "7"),
    ("fallback drops trailing period", "x " + TOOL.format(out="0.5") + "So the probability is 1/2.", "1/2"),
    ("empty", "", None),
    # (a) an unboxed final answer in words
    ("words after tools", "x " + TOOL.format(out="3") + "Three trucks will be needed.", "3"),
    ("compound words", "x " + TOOL.format(out="25") + "In total twenty-five apples remain.", "25"),
    ("words with scale", "So the hall seats three hundred and five people.", "305"),
    ("words and a half", "x " + TOOL.format(out="3.5") + "It takes three and a half hours.", "3.5"),
    ("digits beat words", "x " + TOOL.format(out="12") + "So 12 cookies, two more than ten.", "12"),
    ("ordinal is not a number", "x " + TOOL.format(out="3") + "The third truck is the last.", None),
    ("fraction word is not a number", "x " + TOOL.format(out="1/3") + "One-third of them stayed.", None),
    ("pronoun one", "x " + TOOL.format(out="1") + "No one knows.", None),
    ("words inside tool output ignored", "x " + TOOL.format(out="three trucks"), None),
    # (c) the only box is in tool output; the model's final text states the answer
    (
        "box in output, stated after",
        "x " + TOOL.format(out=r"\boxed{9}") + "So the answer is 9.",
        "9",
    ),
    (
        "box in output, stated before a checking snippet",
        "The answer is $9$. Let me check." + TOOL.format(out=r"\boxed{9}") + "Verified.",
        "9",
    ),
    (
        "box in output, stated in words",
        "x " + TOOL.format(out=r"\boxed{9}") + "Hence nine people came.",
        "9",
    ),
    # hard negatives of (c): no statement by the model itself
    ("box in output, no statement", "To answer this, compute 3+4." + TOOL.format(out=r"\boxed{7}"), None),
    (
        "answer only in tool code and output",
        "Compute." + TOOL.format(out=r"The answer is 7").replace("import sympy", "print('The answer is 7')"),
        None,
    ),
    (
        "statement inside unclosed thinking",
        "<think>The answer is 9." + TOOL.format(out=r"\boxed{9}") + "Verified.",
        None,
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in EXTRACT_CASES], ids=[c[0] for c in EXTRACT_CASES]
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


GRADE_CASES = [
    # (id, prediction, gold, correct)
    ("same", "42", "42", True),
    ("frac forms", r"\dfrac{1}{2}", r"\frac12", True),
    ("exact decimal", "0.5", r"\frac{1}{2}", True),
    ("decimal gold", r"\frac{1}{2}", "0.5", True),
    ("unicode minus", "\u22123", "-3", True),
    ("unicode degree", "90\u00b0", r"90^\circ", True),
    ("degree vs bare", "90", r"90^\circ", True),
    ("percent vs bare", "25", r"25\%", True),
    ("bare vs percent", r"25\%", "25", True),
    ("decimal percent", "12.5", r"12.5\%", True),
    ("scientific", "1.5e3", "1500", True),
    ("scientific negative exponent", "2.5E-2", "0.025", True),
    ("tuple vs column", "(1, 2, 3)", r"\begin{pmatrix} 1 \\ 2 \\ 3 \end{pmatrix}", True),
    ("column vs tuple", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "(1,2)", True),
    ("text choice", "C", r"\text{(C)}", True),
    ("pi", r"2\pi", r"2 \pi", True),
    ("sqrt", r"\sqrt{8}", r"2\sqrt{2}", True),
    ("assignment", "x=5", "5", True),
    # (a) answers in words
    ("word answer", r"\text{three}", "3", True),
    ("word answer compound", "Twenty-One", "21", True),
    ("word answer scale", r"\text{one thousand two hundred}", "1200", True),
    ("word answer half", "three and a half", r"\frac72", True),
    ("word answer wrong", r"\text{three}", "4", False),
    ("word answer teen vs unit", "thirteen", "3", False),
    ("word ordinal", "third", "3", False),
    ("word fraction", "one-third", "1", False),
    ("word half vs whole", "three and a half", "3", False),
    ("word scale vs unit", "three hundred", "3", False),
    # (b) a scalar factored out of a vector or matrix
    (
        "factored vector",
        r"\frac{1}{49}\begin{pmatrix}16\\48\\24\end{pmatrix}",
        r"\begin{pmatrix}16/49\\48/49\\24/49\end{pmatrix}",
        True,
    ),
    (
        "factored gold",
        r"\begin{pmatrix}16/49\\48/49\\24/49\end{pmatrix}",
        r"\frac{1}{49}\begin{pmatrix}16\\48\\24\end{pmatrix}",
        True,
    ),
    ("factored vs tuple", r"2\begin{pmatrix}1\\2\end{pmatrix}", "(2, 4)", True),
    ("negated vector", r"-\begin{pmatrix}1\\2\end{pmatrix}", "(-1, -2)", True),
    (
        "factored sqrt",
        r"\frac{1}{\sqrt{2}}\begin{pmatrix}1\\1\end{pmatrix}",
        r"\begin{pmatrix}\frac{\sqrt2}{2}\\\frac{\sqrt2}{2}\end{pmatrix}",
        True,
    ),
    (
        "factored matrix",
        r"\frac12\begin{bmatrix}1 & 2\\3 & 4\end{bmatrix}",
        r"\begin{pmatrix}1/2 & 1\\3/2 & 2\end{pmatrix}",
        True,
    ),
    (
        "factored vector wrong entry",
        r"\frac{1}{49}\begin{pmatrix}16\\48\\25\end{pmatrix}",
        r"\begin{pmatrix}16/49\\48/49\\24/49\end{pmatrix}",
        False,
    ),
    (
        "factored vector wrong scalar",
        r"\frac{1}{7}\begin{pmatrix}16\\48\\24\end{pmatrix}",
        r"\begin{pmatrix}16/49\\48/49\\24/49\end{pmatrix}",
        False,
    ),
    (
        "scalar dropped",
        r"\begin{pmatrix}16\\48\\24\end{pmatrix}",
        r"\frac{1}{49}\begin{pmatrix}16\\48\\24\end{pmatrix}",
        False,
    ),
    ("negation dropped", r"-\begin{pmatrix}1\\2\end{pmatrix}", "(1, 2)", False),
    (
        "factored matrix wrong",
        r"2\begin{bmatrix}1 & 2\\3 & 4\end{bmatrix}",
        r"\begin{pmatrix}1/2 & 1\\3/2 & 2\end{pmatrix}",
        False,
    ),
    ("exponent is not a factor", r"x^2\begin{pmatrix}1\\2\end{pmatrix}", "(2, 4)", False),
    # hard negatives
    ("rounded third", "0.333333", r"\frac13", False),
    ("rounded 2pi", "6.283185", r"2\pi", False),
    ("rounded sqrt2", "1.414214", r"\sqrt2", False),
    ("rounded vs decimal gold ok", "0.33", "0.33", True),
    ("wrong number", "41", "42", False),
    ("wrong sign", "-42", "42", False),
    ("wrong tuple", "(2, 1)", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", False),
    ("scientific wrong", "1.5e2", "1500", False),
    ("percent wrong", "25", r"2.5\%", False),
    ("no answer", None, "42", False),
]


@pytest.mark.parametrize(
    ("pred", "gold", "correct"), [c[1:] for c in GRADE_CASES], ids=[c[0] for c in GRADE_CASES]
)
def test_is_correct(pred, gold, correct):
    assert is_correct(pred, gold) is correct


def test_grade_answer_reports_no_answer():
    g = grade_answer(None, "1")
    assert (g.correct, g.status) == (False, "no_answer")


def test_group_answers_by_equivalence_not_string():
    answers = [r"\frac12", "0.5", "2", r"\dfrac{1}{2}", "2.0", "3"]
    assert group_answers(answers) == [0, 0, 1, 0, 1, 2]


def test_grade_many_pool_matches_serial():
    pairs = [(c[1], c[2]) for c in GRADE_CASES]
    serial = grade_many(pairs, workers=0)
    pooled = grade_many(pairs, workers=2, batch_size=4)
    assert [g.correct for g in pooled] == [g.correct for g in serial] == [c[3] for c in GRADE_CASES]


def test_pathological_input_times_out_and_is_counted():
    # sympy tries to evaluate the tower; math-verify's alarm or our kill must stop it
    pairs = [("1", "1"), (r"9^{9^{9^{9}}}", "1"), ("2", "2")]
    start = time.monotonic()
    grades = grade_many(pairs, workers=1, timeout=2)
    assert time.monotonic() - start < 15
    assert [g.correct for g in grades] == [True, False, True]
    assert grades[1].status == "timeout"


def _hang_or_echo(item, timeout=None):
    if item == "hang":
        time.sleep(60)  # no alarm is set around this: only the parent's kill can end it
    if item == "crash":
        os._exit(3)
    return item


def test_pool_kills_hung_worker_and_goes_on():
    items = ["a", "hang", "b", "crash", "c"]
    start = time.monotonic()
    with GradingPool(workers=1, timeout=1.0, batch_size=8) as pool:
        out = pool.map(_hang_or_echo, items, on_failure=lambda item, status, detail: status)
        assert pool.restarts == 2
    assert out == ["a", "timeout", "b", "error", "c"]
    assert time.monotonic() - start < 10


def _shared_data() -> Path | None:
    shared = shared_data_dir()
    return shared if shared is not None and (shared / "math500.jsonl").is_file() else None


@pytest.mark.skipif(
    _shared_data() is None, reason="shared MATH-500 data not found (set DEEP_MATH_SHARED_DATA)"
)
def test_math500_reference_solutions_all_correct():
    lines = (_shared_data() / "math500.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    pairs = [(r["solution"], r["answer"]) for r in rows]
    grades = grade_many(pairs, workers=2, extract=True)
    wrong = [(r["id"], r["answer"], g) for r, g in zip(rows, grades, strict=True) if not g.correct]
    assert len(rows) == 500
    assert not wrong, wrong[:5]


# The agent's fold of a snippet that printed "```" and then a box (a longer fence: see fold_output).
PRINTED_BOX = (
    "Check <tool_call>\nprint(stuff)\n</tool_call>" + "\n````output\n```\n\\boxed{42}\n````\n" + " Hmm."
)


def test_a_box_printed_after_a_printed_fence_is_tool_output():
    from deep_math.evaluation.extract import fold_output

    assert fold_output("```\n\\boxed{42}") == "\n````output\n```\n\\boxed{42}\n````\n"
    assert extract_answer(PRINTED_BOX) is None
    assert extract_answer(PRINTED_BOX + " So \\boxed{7}.") == "7"


def test_output_spans_locate_tool_output_by_position():
    text = "I write ```output\nmy own \\boxed{3}\n``` myself." + "\n```output\n\\boxed{9}\n```\n" + " done"
    start = text.index("\n```output\n\\boxed{9}")
    spans = [(start, start + len("\n```output\n\\boxed{9}\n```\n"))]
    assert extract_answer(text, spans) == "3"  # the model's own text, by position
    assert extract_answer("a \\boxed{5} b", []) == "5"
