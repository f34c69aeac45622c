"""Metrics over the per-problem results of one generated file.

A metric is a callable `metric(results: list[ProblemResult]) -> dict[str, value]` with a `name`;
`configs/evaluation.yaml` lists them as Hydra `_target_` entries. Values are plain floats/ints/
lists (YAML-ready); None means "not measurable from this file" (e.g. no finish reasons recorded).

Accuracy intervals are percentile bootstrap intervals over problems (resampling problems with
replacement), which is the uncertainty that matters when comparing runs on one benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from deep_math.evaluation.scoring import ProblemResult

Values = dict[str, Any]


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> list[float] | None:
    """Percentile bootstrap interval of the mean of `values` (None for no values)."""
    if not len(values) or n_resamples <= 0:
        return None
    arr = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n_resamples, len(arr)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return [round(float(lo), 6), round(float(hi), 6)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _n_samples(results: list[ProblemResult]) -> int:
    return min((len(r.grades) for r in results), default=0)


def _mean(xs: Sequence[float]) -> float | None:
    return round(float(np.mean(xs)), 6) if len(xs) else None


class _Bootstrapped:
    def __init__(self, k: int | None = None, bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0):
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1 or null (all samples), got {k}")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        self.k, self.bootstrap, self.confidence, self.seed = k, bootstrap, confidence, seed

    def _k(self, results: list[ProblemResult]) -> int:
        n = _n_samples(results)
        return min(self.k, n) if self.k else n

    def _with_ci(self, key: str, per_problem: list[float]) -> Values:
        return {
            key: _mean(per_problem),
            f"{key}_ci": bootstrap_ci(per_problem, self.bootstrap, self.confidence, self.seed),
        }


class MajorityAtK(_Bootstrapped):
    """maj@k: the majority answer of the first k samples (equivalence groups, see scoring) is
    correct. k=null uses all samples. Also reports ties and ties that involved a correct group."""

    name = "majority"

    def __call__(self, results: list[ProblemResult]) -> Values:
        k = self._k(results)
        votes = [r.majority(k) for r in results]
        key = f"maj@{k}"
        out = self._with_ci(key, [float(v.correct) for v in votes])
        out[f"{key}_ties"] = sum(v.tie for v in votes)
        out[f"{key}_ties_with_correct"] = sum(v.tie_with_correct for v in votes)
        return out


class MeanAtK(_Bootstrapped):
    """mean@k: the share of correct samples among the first k, averaged over problems."""

    name = "mean"

    def __call__(self, results: list[ProblemResult]) -> Values:
        k = self._k(results)
        return self._with_ci(f"mean@{k}", [float(np.mean(r.correct[:k])) for r in results])


class PassAtK:
    """Unbiased pass@k for k in `ks` (default 1, 2, 4, ... up to the number of samples)."""

    name = "pass"

    def __init__(self, ks: Sequence[int] | None = None):
        self.ks = list(ks) if ks else None

    def __call__(self, results: list[ProblemResult]) -> Values:
        n = _n_samples(results)
        ks = self.ks or [2**i for i in range(n.bit_length()) if 2**i <= n]
        out: Values = {}
        for k in ks:
            vals = [pass_at_k(len(r.grades), sum(r.correct), k) for r in results if len(r.grades) >= k]
            out[f"pass@{k}"] = _mean(vals)
        return out


class NoAnswerRate:
    """Share of samples with no extractable answer."""

    name = "no_answer"

    def __call__(self, results: list[ProblemResult]) -> Values:
        return {"no_answer_rate": _mean([float(g.answer is None) for r in results for g in r.grades])}


class TruncationRate:
    """Share of samples cut off by the token budget or the step limit (finish_reason `budget` or
    `max_steps`); None when the file records no finish reasons."""

    name = "truncation"

    def __call__(self, results: list[ProblemResult]) -> Values:
        samples = [s for r in results for s in r.samples if s.finish_reason is not None]
        return {"truncation_rate": _mean([float(s.truncated) for s in samples])}


class OutputLength:
    """Mean length per trace in tokens: the model's own output and tool output, separately."""

    name = "length"

    def __call__(self, results: list[ProblemResult]) -> Values:
        samples = [s for r in results for s in r.samples]
        model = [s.model_tokens for s in samples if s.model_tokens is not None]
        tool = [s.tool_tokens for s in samples if s.tool_tokens is not None]
        return {
            "model_tokens_mean": _mean(model),
            "tool_tokens_mean": _mean(tool),
            "model_tokens_median": float(np.median(model)) if model else None,
        }


class ToolUse:
    """Tool calls / errors / timeouts / sandbox errors per trace, the share of traces that call
    the tool, and the per-sample accuracy of traces with and without tool use."""

    name = "tool_use"

    def __call__(self, results: list[ProblemResult]) -> Values:
        pairs = [(s, g.correct) for r in results for s, g in zip(r.samples, r.grades, strict=True)]

        def per_trace(attr: str) -> float | None:
            vals = [getattr(s, attr) for s, _ in pairs if getattr(s, attr) is not None]
            return _mean(vals)

        used = [c for s, c in pairs if (s.tool_calls or 0) > 0]
        unused = [c for s, c in pairs if not (s.tool_calls or 0) > 0]
        return {
            "tool_calls_per_trace": per_trace("tool_calls"),
            "tool_errors_per_trace": per_trace("tool_errors"),
            "tool_timeouts_per_trace": per_trace("tool_timeouts"),
            "sandbox_errors_per_trace": per_trace("sandbox_errors"),
            "tool_use_share": _mean([float((s.tool_calls or 0) > 0) for s, _ in pairs]),
            "accuracy_with_tool": _mean([float(c) for c in used]),
            "accuracy_without_tool": _mean([float(c) for c in unused]),
            "traces_with_tool": len(used),
            "traces_without_tool": len(unused),
        }


METRICS: dict[str, type] = {
    cls.__name__: cls
    for cls in (MajorityAtK, MeanAtK, PassAtK, NoAnswerRate, TruncationRate, OutputLength, ToolUse)
}
