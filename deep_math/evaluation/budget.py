"""Accuracy against a token budget, from one generated file (no re-generation).

A trace cut at budget B counts only if its answer was complete before the cut: sample i is
correct at B when it is correct and its answer position `p_i <= B`, and it has no answer at B
when `p_i > B` (maj@k at B votes among the samples answered by B; mean@k at B is the share of
samples correct by B). The answer is the trace's final answer, the one graded without a budget;
an earlier box that the model later revised is not re-graded.

Both model tokens and tool-output tokens count toward B: a trace's length is
`model_tokens + tool_tokens`, the tokens the context holds when the answer is written.

Where the answer sits, in tokens. A record holds the trace text and its two token counts, not
per-token offsets, so the position is estimated from the text:
- boxed answer: the character offset just after the answer's box (`extract.boxed_answer_end`,
  the same box `extract_answer` takes) splits the text into what comes before and after it. Of
  the characters before it, those in fenced `output` blocks are tool characters and the rest
  (tool code included: the model wrote it) model characters; each kind is converted to tokens at
  its own trace's rate: `p = ceil(model_tokens * model_chars_before / model_chars
  + tool_tokens * tool_chars_before / tool_chars)`. The estimate is exact at the ends of the
  trace and at the end of every kind's text, so its error is bounded by the tokens written after
  the box (usually a few); it rounds up, so a box is never credited earlier than the estimate.
- unboxed answer (the final text states it, see `extract`): known only when the trace ends, so
  `p = model_tokens + tool_tokens`.
- no answer: never counted.
Without recorded counts, lengths are measured first (`lengths.fill_lengths`) and the same rule
applies to the measured counts.

Budgets are in tokens; `k` means 1024 (so "32k" is 32768, the usual max_tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deep_math.evaluation.extract import boxed_answer_end, tool_spans
from deep_math.evaluation.records import Sample
from deep_math.evaluation.scoring import ProblemResult

K = 1024
TABLE_BUDGETS = (1 * K, 2 * K, 5 * K, 10 * K, 20 * K, 32 * K)


def budget_label(tokens: int) -> str:
    return f"{tokens // K}k" if tokens % K == 0 else str(tokens)


def trace_tokens(sample: Sample) -> int:
    return (sample.model_tokens or 0) + (sample.tool_tokens or 0)


def answer_position(sample: Sample, has_answer: bool) -> int | None:
    """Tokens of the trace up to and including its answer (see the module docstring); None when
    the sample has no answer."""
    if not has_answer:
        return None
    total = trace_tokens(sample)
    end = boxed_answer_end(sample.text)
    if end is None:
        return total
    outputs = [(a, b) for kind, a, b in tool_spans(sample.text) if kind == "output"]
    tool_chars = sum(b - a for a, b in outputs)
    tool_before = sum(max(0, min(b, end) - a) for a, b in outputs)
    model_chars = len(sample.text) - tool_chars
    model_before = end - tool_before
    estimate = 0.0
    if model_chars:
        estimate += (sample.model_tokens or 0) * model_before / model_chars
    if tool_chars:
        estimate += (sample.tool_tokens or 0) * tool_before / tool_chars
    return min(total, math.ceil(estimate - 1e-9))


def positions(results: list[ProblemResult]) -> list[list[int | None]]:
    """Answer position in tokens of every sample, per problem."""
    return [
        [answer_position(s, g.answer is not None) for s, g in zip(r.samples, r.grades, strict=True)]
        for r in results
    ]


def _cut(result: ProblemResult, pos: list[int | None], budget: int) -> ProblemResult:
    """The problem as if every trace were cut at `budget`: later answers become no answer."""
    keep = [p is not None and p <= budget for p in pos]
    groups = [g if k else None for g, k in zip(result.groups, keep, strict=True)]
    return ProblemResult(result.problem, result.grades, groups)


def accuracy_at(
    results: list[ProblemResult], pos: list[list[int | None]], budget: int, k: int | None = None
) -> dict[str, float]:
    """maj@k, mean@k and the answered share with every trace cut at `budget` tokens."""
    maj, mean, answered = [], [], []
    for r, p in zip(results, pos, strict=True):
        n = min(k, len(p)) if k else len(p)
        ok = [q is not None and q <= budget for q in p[:n]]
        maj.append(float(_cut(r, p, budget).majority(n).correct))
        mean.append(float(np.mean([c and o for c, o in zip(r.correct[:n], ok, strict=True)])))
        answered.append(float(np.mean(ok)))
    return {
        "maj": round(float(np.mean(maj)), 6),
        "mean": round(float(np.mean(mean)), 6),
        "answered": round(float(np.mean(answered)), 6),
    }


def curve_budgets(longest: int, table: Sequence[int] = TABLE_BUDGETS, points: int = 40) -> list[int]:
    """Budgets for the curve: geometric from 256 tokens to past the longest trace, plus the table's."""
    top = max(longest, max(table, default=K), 2 * K)
    grid = np.geomspace(256, top, points).round().astype(int).tolist()
    return sorted(set(grid) | set(table))


def budget_curve(
    results: list[ProblemResult], table: Sequence[int] = TABLE_BUDGETS, k: int | None = None
) -> dict[str, Any]:
    """The budget report of one run: the table at `table` budgets and the curve's points."""
    pos = positions(results)
    longest = max((trace_tokens(s) for r in results for s in r.samples), default=0)
    maj_k = min((len(r.grades) for r in results), default=0)
    k = min(k, maj_k) if k else maj_k
    table_rows = {int(b): accuracy_at(results, pos, int(b), k) for b in table}
    curve = [{"budget": b, **accuracy_at(results, pos, b, k)} for b in curve_budgets(longest, table)]
    return {
        "k": k,
        "tokens_counted": "model_tokens + tool_tokens",
        "longest_trace": longest,
        "table": table_rows,
        "no_cut": accuracy_at(results, pos, math.inf, k),
        "curve": curve,
    }


def table_rows(labeled: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """Rows: runs (arms); columns: maj@k (%) at each table budget and without a cut."""
    if not labeled:
        return [], []
    budgets = list(labeled[0][1]["table"])
    header = ["run", *(f"≤{budget_label(b)}" for b in budgets), "no cut"]
    rows = []
    for label, rep in labeled:
        cells = [f"{100 * rep['table'][b]['maj']:.1f}" if b in rep["table"] else "-" for b in budgets]
        rows.append([label, *cells, f"{100 * rep['no_cut']['maj']:.1f}"])
    return header, rows


def table_markdown(labeled: list[tuple[str, dict[str, Any]]]) -> list[str]:
    from deep_math.evaluation.report import markdown_table

    header, rows = table_rows(labeled)
    return markdown_table(header, rows) if rows else []


def plot_curves(labeled: list[tuple[str, dict[str, Any]]], path: Path, title: str | None = None) -> None:
    """Accuracy (maj@k, solid; mean@k, dashed) against the budget, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, rep) in enumerate(labeled):
        xs = [p["budget"] for p in rep["curve"]]
        color = f"C{i}"
        ax.plot(
            xs,
            [100 * p["maj"] for p in rep["curve"]],
            color=color,
            drawstyle="steps-post",
            label=f"{label} maj@{rep['k']}",
        )
        ax.plot(
            xs,
            [100 * p["mean"] for p in rep["curve"]],
            color=color,
            ls="--",
            alpha=0.6,
            lw=1,
            drawstyle="steps-post",
        )
    for b in labeled[0][1]["table"] if labeled else ():
        ax.axvline(b, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log", base=2)
    ticks = list(labeled[0][1]["table"]) if labeled else []
    ax.set_xticks(ticks, [budget_label(t) for t in ticks])
    ax.set_xlabel("token budget (model + tool tokens; an answer counts if boxed within it)")
    ax.set_ylabel("accuracy (%)  — solid maj@k, dashed mean@k")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "Accuracy against token budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
