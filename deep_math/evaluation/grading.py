"""Grading answers against gold answers with math-verify, plus the rewrites in `normalize`.

`is_correct(prediction, gold)` grades one item in this process (the training reward uses it). Its
timeouts are math-verify's own `signal.alarm` timeouts, which work only in the main thread; from
another thread it runs without a timeout. For many items use `deep_math.evaluation.pool.grade_many`
(a process pool, where a hung item is killed and counted instead of stalling the run).

The gold is parsed wrapped as `$...$` (unwrapped, about a fifth of MATH-500 golds parse wrongly);
parsed golds are cached per process, since k samples share one gold.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deep_math.evaluation import normalize as norm
from deep_math.evaluation.extract import after_thinking, extract_answer, last_boxed, split_tool_blocks

log = logging.getLogger(__name__)

# Grade.status values
OK, NO_ANSWER, TIMEOUT, ERROR = "ok", "no_answer", "timeout", "error"
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Grade:
    """One graded sample: the extracted answer (None: no answer), whether it is correct, and how
    grading went (`ok`, `no_answer`, `timeout`, `error`; the last two are scored wrong)."""

    answer: str | None
    correct: bool
    status: str = OK
    detail: str | None = None


class _TimeoutCounter(logging.Filter):
    """Counts (and swallows) math-verify's "Timeout during ..." warnings: math-verify returns
    False on a timeout, and this is how we tell a timeout from a plain mismatch."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Timeout during"):
            self.count += 1
            return False
        return True


_timeouts = _TimeoutCounter()
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_timeouts)


def _alarm_timeout(timeout: float | None) -> int | None:
    """math-verify's timeout argument: whole seconds, None outside the main thread."""
    if timeout is None or threading.current_thread() is not threading.main_thread():
        return None
    return max(1, int(round(timeout)))


def _parse(latex: str, timeout: int | None) -> list[Any]:
    from math_verify import parse

    return parse("$" + latex + "$", parsing_timeout=timeout)


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None) -> tuple[Any, ...]:
    return tuple(_parse(gold, timeout))


def _verify(gold: Sequence[Any], pred: Sequence[Any], timeout: int | None) -> bool:
    from math_verify import verify

    if not gold or not pred:
        return False
    return bool(verify(list(gold), list(pred), timeout_seconds=timeout))


def _prepare(prediction: str, gold: str) -> tuple[str, str]:
    pred, ref = norm.normalize(prediction), norm.normalize(gold)
    if norm.has_percent(pred) != norm.has_percent(ref):
        pred, ref = norm.strip_percent(pred), norm.strip_percent(ref)
    if norm.has_decimal(pred) and not norm.has_decimal(ref):
        pred = norm.rationalize_decimals(pred)
    return pred, ref


def compare(
    prediction: str, gold: str, timeout: float | None = DEFAULT_TIMEOUT, shortcut: bool = True
) -> bool:
    """Whether `prediction` (an extracted answer) is equivalent to `gold`. Raises nothing for bad
    LaTeX (math-verify scores it False); see `grade_answer` for timeout reporting. `shortcut`:
    identical normalized strings are equal without calling math-verify (off only to benchmark)."""
    pred, ref = _prepare(prediction, gold)
    if shortcut and pred == ref and pred:
        return True
    secs = _alarm_timeout(timeout)
    return _verify(_parse_gold(ref, secs), _parse(pred, secs), secs)


def is_correct(prediction: str | None, gold: str, timeout: float | None = DEFAULT_TIMEOUT) -> bool:
    """True when the extracted answer `prediction` is equivalent to `gold`; None (no answer) is
    wrong. In-process; math-verify's timeouts apply in the main thread only."""
    if prediction is None or not str(prediction).strip():
        return False
    return compare(str(prediction), str(gold), timeout)


def grade_answer(prediction: str | None, gold: str, timeout: float | None = DEFAULT_TIMEOUT) -> Grade:
    """Like `is_correct`, reporting no-answer, math-verify timeouts and unexpected errors."""
    if prediction is None or not prediction.strip():
        return Grade(None, False, NO_ANSWER)
    before = _timeouts.count
    try:
        correct = compare(prediction, str(gold), timeout)
    except Exception as exc:  # a grading bug must score one item, not end the run
        log.debug("grading %r against %r failed", prediction, gold, exc_info=True)
        return Grade(prediction, False, ERROR, f"{type(exc).__name__}: {exc}")
    if not correct and _timeouts.count > before:
        return Grade(prediction, False, TIMEOUT, "math-verify timeout")
    return Grade(prediction, correct)


def quick_grade(text: str, gold: str) -> Grade | None:
    """The grade of a trace when it needs no math-verify call (no answer, or a boxed answer whose
    normalized string equals the gold's), else None. Cheap: used to keep such items out of the pool."""
    try:
        cleaned, _ = split_tool_blocks(text or "")
        cleaned = after_thinking(cleaned)
        if cleaned is None:
            return Grade(None, False, NO_ANSWER)
        boxed = last_boxed(cleaned)
        if boxed is None:
            return None  # needs math-verify's fallback extraction
        if not boxed:
            return Grade(None, False, NO_ANSWER)
        pred, ref = _prepare(boxed, str(gold))
    except Exception:  # noqa: BLE001 - let the pool report it
        return None
    return Grade(boxed, True) if pred == ref and pred else None


def grade_text(item: tuple[str, str], timeout: float | None = DEFAULT_TIMEOUT) -> Grade:
    """Extract the answer of a whole trace and grade it: item = (trace text, gold)."""
    text, gold = item
    try:
        answer = extract_answer(text)
    except Exception as exc:  # noqa: BLE001 - a malformed trace scores one item as an error
        return Grade(None, False, ERROR, f"extraction failed: {type(exc).__name__}: {exc}")
    return grade_answer(answer, gold, timeout)


def equivalent(a: str, b: str, timeout: float | None = DEFAULT_TIMEOUT) -> bool:
    """Whether two predicted answers are the same mathematical answer (either direction: math-verify
    is not symmetric, e.g. for assignments)."""
    if a == b:
        return True
    try:
        return compare(b, a, timeout) or compare(a, b, timeout)
    except Exception:  # noqa: BLE001 - math-verify can raise anything on odd input: not equivalent
        return False


def group_answers(answers: Sequence[str], timeout: float | None = DEFAULT_TIMEOUT) -> list[int]:
    """Group ids for `answers`: answers equivalent to an earlier group's first member join it.
    Group ids are numbered in order of first appearance."""
    reps: list[str] = []
    ids: list[int] = []
    for ans in answers:
        for gid, rep in enumerate(reps):
            if equivalent(rep, ans, timeout):
                ids.append(gid)
                break
        else:
            reps.append(ans)
            ids.append(len(reps) - 1)
    return ids
