"""The evaluation pipeline: read -> grade (pool) -> group answers -> lengths -> metrics -> write.

`run_evaluation(cfg)` is what evaluation.py calls; `evaluate_file` scores one generated file with
an open pool and is usable on its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deep_math.evaluation import report
from deep_math.evaluation.arms import arm_of_problems
from deep_math.evaluation.budget import budget_curve
from deep_math.evaluation.config import EvaluationConfig, build_metrics
from deep_math.evaluation.grading import ERROR, TIMEOUT, Grade, grade_text, group_answers, quick_grade
from deep_math.evaluation.lengths import LazyTokenizer, fill_lengths, needs_tokenizer, resolve_tokenizer
from deep_math.evaluation.pool import GradingPool
from deep_math.evaluation.records import GeneratedProblem, read_generated
from deep_math.evaluation.scoring import (
    ProblemResult,
    assign_groups,
    grading_counts,
    wrong_answers_to_group,
)

log = logging.getLogger(__name__)


@dataclass
class EvaluatedRun:
    path: Path
    label: str
    results: list[ProblemResult]
    values: dict[str, Any]  # every metric's values, flat
    malformed: list[str]
    grading: dict[str, int]  # samples per grading status + group fallbacks
    lengths_measured: int = 0  # samples whose token counts came from the tokenizer
    outputs: dict[str, str] = field(default_factory=dict)
    arm: str | None = None  # from the records' meta (see arms.py); None: unknown
    budget: dict[str, Any] | None = None  # accuracy against token budget (see budget.py)

    @property
    def summary(self) -> dict[str, Any]:
        return report.summary(self)


def _timed_out_grade(item: tuple[str, str], status: str, detail: str) -> Grade:
    """A sample whose grading was killed: wrong, counted, its boxed answer kept when cheap to get."""
    from deep_math.evaluation.extract import after_thinking, last_boxed, split_tool_blocks

    try:
        cleaned = after_thinking(split_tool_blocks(item[0])[0])
        answer = last_boxed(cleaned) if cleaned is not None else None
    except Exception:  # noqa: BLE001 - only a best-effort answer for an item already failed
        answer = None
    return Grade(answer or None, False, status, detail)


def _string_groups(answers: list[str]) -> list[int]:
    """Fallback when grouping a problem's answers timed out or crashed: one group per string."""
    return list(range(len(answers)))  # the answers are already distinct strings


def grade_problems(
    problems: list[GeneratedProblem], pool: GradingPool, progress: bool = False
) -> tuple[list[ProblemResult], int]:
    """Grade every sample and group each problem's answers; returns the results and the number of
    problems whose grouping fell back to string equality (timeout/crash)."""
    items = [(s.text, p.target) for p in problems for s in p.samples]
    grades: list[Grade | None] = [quick_grade(text, gold) for text, gold in items]
    todo = [i for i, g in enumerate(grades) if g is None]
    log.info("grading %d samples (%d need math-verify)", len(items), len(todo))
    for i, g in zip(
        todo,
        pool.map(grade_text, [items[i] for i in todo], progress, "grading", _timed_out_grade),
        strict=True,
    ):
        grades[i] = g

    per_problem: list[list[Grade]] = []
    pos = 0
    for p in problems:
        per_problem.append([g for g in grades[pos : pos + len(p.samples)] if g is not None])
        pos += len(p.samples)

    to_group = [wrong_answers_to_group(gs) for gs in per_problem]
    needs = [i for i, answers in enumerate(to_group) if len(answers) > 1]
    grouped = pool.map(
        group_answers,
        [to_group[i] for i in needs],
        progress,
        "grouping answers",
        on_failure=lambda answers, status, detail: None,
        weight=len,
    )
    fallbacks = sum(ids is None for ids in grouped)
    group_ids = {i: ids or _string_groups(to_group[i]) for i, ids in zip(needs, grouped, strict=True)}
    results = []
    for i, (p, gs) in enumerate(zip(problems, per_problem, strict=True)):
        ids = group_ids.get(i, [0] * len(to_group[i]))
        results.append(ProblemResult(p, gs, assign_groups(gs, dict(zip(to_group[i], ids, strict=True)))))
    return results, fallbacks


def evaluate_file(
    path: str | Path,
    pool: GradingPool,
    metrics: list[Any],
    tokenizer: Any = None,
    limit: int | None = None,
    strict: bool = False,
    label: str | None = None,
    progress: bool = False,
    budgets: list[int] | None = None,
) -> EvaluatedRun:
    """Score one generated file. `tokenizer`: an object with `encode`, a model path/id, or None
    for the embedded model; loaded only if some sample lacks token counts. `budgets`: the token
    budgets of the accuracy-against-budget table (None: no budget report)."""
    path = Path(path)
    read = read_generated(path, limit=limit, strict=strict)
    if not read.problems:
        raise ValueError(f"{path}: no problems to evaluate ({len(read.malformed)} malformed lines)")
    measured = 0
    if needs_tokenizer(read.problems):
        measured = fill_lengths(read.problems, resolve_tokenizer(tokenizer))
    results, fallbacks = grade_problems(read.problems, pool, progress)
    values: dict[str, Any] = {}
    for metric in metrics:
        values.update(metric(results))
    grading = grading_counts(results)
    grading["grouping_fallbacks"] = fallbacks
    if grading[TIMEOUT] or grading[ERROR]:
        log.warning(
            "%s: %d grading timeouts, %d grading errors (scored wrong)",
            path,
            grading[TIMEOUT],
            grading[ERROR],
        )
    run = EvaluatedRun(path, label or path.stem, results, values, read.malformed, grading, measured)
    run.arm = arm_of_problems(read.problems, str(path))
    if budgets:
        run.budget = budget_curve(results, budgets)
    return run


def run_evaluation(cfg: EvaluationConfig) -> list[EvaluatedRun]:
    """Evaluate every configured file, write per-file results, and (for several files) the
    comparison table and plot."""
    metrics = build_metrics(cfg.metrics)
    labels = cfg.labels or [None] * len(cfg.generated_files)
    tokenizer = LazyTokenizer(cfg.tokenizer)  # loaded on first use, once for all files
    runs = []
    with GradingPool(workers=cfg.workers, timeout=cfg.timeout, batch_size=cfg.batch_size) as pool:
        for path, label in zip(cfg.generated_files, labels, strict=True):
            run = evaluate_file(
                path, pool, metrics, tokenizer, cfg.limit, cfg.strict, label, cfg.progress, cfg.budget.table
            )
            multiple = len(cfg.generated_files) > 1
            run.outputs.update(report.write_run(run, cfg.results_file, multiple, plot=cfg.plot))
            runs.append(run)
    paired = report.paired_comparison(runs, cfg.arms) if len(runs) > 1 else None
    if paired is not None:
        report.write_comparison(runs, cfg.comparison_file, plot=cfg.plot, paired=paired)
    if cfg.html:
        report.write_html(runs, paired, cfg.comparison_file, cfg.html_samples)
    return runs
