"""Three-arm comparison: no tool, tool available, tool trained.

Offering a tool can lower accuracy, so every comparison needs the arm without it. A run's arm
comes from its records' `meta` (never from file names):
- `meta["arm"]`, when present, is taken as written (`"tool trained"` / `"Tool-Trained"` read as
  the canonical `tool_trained`);
- else `meta["agent"]` false -> `no_tool` (the baseline prompt; `no_tool_trained` if an adapter
  `meta["lora_path"]` is set), `agent` true without an adapter -> `tool_available`, with an adapter
  -> `tool_trained`;
- records without these keys (the minimal `{"text", "target"}` form) have no arm.
A file whose records disagree has no arm (a warning names the arms found).

For each pair of runs (A, B), on the problems both hold (matched by id), with maj@k as each
problem's score:
- flips: problems solved by A and not B (`a_only`), by B and not A (`b_only`), by both, by neither;
- the accuracy difference B - A and its paired bootstrap interval: problems are resampled with
  replacement, the SAME resampled problems for both arms (pairing removes the between-problem
  variance that two independent intervals would double count); percentile interval of the mean
  difference over `n_resamples` resamples from `numpy.random.default_rng(seed)`, so a report is
  reproducible. An interval that excludes 0 says the arms differ on this benchmark at that
  confidence; it says nothing about other problems.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from deep_math.evaluation.records import GeneratedProblem

if TYPE_CHECKING:
    from deep_math.evaluation.run import EvaluatedRun

log = logging.getLogger(__name__)

# Canonical arms in report order, with their titles.
ARMS = {
    "no_tool": "no tool",
    "tool_available": "tool available",
    "tool_trained": "tool trained",
    "no_tool_trained": "no tool + adapter",
}


def arm_of_meta(meta: dict[str, Any]) -> str | None:
    """The arm of one record's meta (see the module docstring), None when it cannot be told."""
    if meta.get("arm"):
        canonical = re.sub(r"[\s-]+", "_", str(meta["arm"]).strip().lower())
        return canonical if canonical in ARMS else str(meta["arm"])
    if "agent" not in meta or meta["agent"] is None:
        return None
    adapter = bool(meta.get("lora_path"))
    if not meta["agent"]:
        return "no_tool_trained" if adapter else "no_tool"
    return "tool_trained" if adapter else "tool_available"


def arm_of_problems(problems: list[GeneratedProblem], where: str = "") -> str | None:
    """The arm shared by every record of a file; None when unknown or mixed (with a warning)."""
    arms = {arm_of_meta(p.meta) for p in problems}
    if len(arms) == 1:
        return arms.pop()
    log.warning("%s: records disagree on their arm %s; no arm for this file", where, sorted(map(str, arms)))
    return None


def arm_title(arm: str | None) -> str:
    return ARMS.get(arm, arm) if arm else "-"


def arm_order(arm: str | None) -> int:
    return list(ARMS).index(arm) if arm in ARMS else len(ARMS)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> list[float] | None:
    """Percentile interval of mean(b - a) over problems resampled together (see module doc)."""
    if len(a) == 0 or n_resamples <= 0:
        return None
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return [round(float(lo), 6), round(float(hi), 6)]


@dataclass
class Pair:
    a: str  # run names (arm titles when the runs are arms)
    b: str
    shared: int  # problems both runs hold
    both: int
    a_only: int  # solved by A, not by B
    b_only: int
    neither: int
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_b - accuracy_a on the shared problems
    interval: list[float] | None
    a_only_ids: list[str]
    b_only_ids: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def solved_by_id(run: EvaluatedRun) -> dict[str, bool]:
    """maj@k correctness per problem id (k: all samples, as the accuracy column)."""
    k = min((len(r.grades) for r in run.results), default=0)
    return {r.problem.id: r.majority(k).correct for r in run.results}


def compare_pair(
    name_a: str,
    a: dict[str, bool],
    name_b: str,
    b: dict[str, bool],
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Pair:
    ids = [i for i in a if i in b]
    va = np.array([a[i] for i in ids], dtype=float)
    vb = np.array([b[i] for i in ids], dtype=float)
    a_only = [i for i in ids if a[i] and not b[i]]
    b_only = [i for i in ids if b[i] and not a[i]]
    return Pair(
        a=name_a,
        b=name_b,
        shared=len(ids),
        both=int(sum(a[i] and b[i] for i in ids)),
        a_only=len(a_only),
        b_only=len(b_only),
        neither=int(sum(not a[i] and not b[i] for i in ids)),
        accuracy_a=round(float(va.mean()), 6) if ids else 0.0,
        accuracy_b=round(float(vb.mean()), 6) if ids else 0.0,
        difference=round(float((vb - va).mean()), 6) if ids else 0.0,
        interval=paired_bootstrap(va, vb, n_resamples, confidence, seed),
        a_only_ids=a_only,
        b_only_ids=b_only,
    )


def run_names(runs: list[EvaluatedRun]) -> tuple[list[str], bool]:
    """Names for the comparison: arm titles when every run has a distinct known arm (then the
    second value is True), else the run labels."""
    arms = [run.arm for run in runs]
    if all(arms) and len(set(arms)) == len(arms):
        return [arm_title(a) for a in arms], True
    return [run.label for run in runs], False


def ordered(runs: list[EvaluatedRun]) -> list[EvaluatedRun]:
    """Runs in arm order (no tool, tool available, tool trained, others) when all have arms."""
    if all(run.arm for run in runs):
        return sorted(runs, key=lambda run: arm_order(run.arm))
    return list(runs)


def compare_runs(
    runs: list[EvaluatedRun], n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Per-run rows and every pair's flips and paired interval, as a YAML-ready dict."""
    from deep_math.evaluation.report import summary

    runs = ordered(runs)
    names, by_arm = run_names(runs)
    solved = [solved_by_id(run) for run in runs]
    rows = []
    for name, run in zip(names, runs, strict=True):
        s = summary(run)
        rows.append(
            {
                "name": name,
                "arm": run.arm,
                "label": run.label,
                "file": str(run.path),
                **{
                    key: s.get(key)
                    for key in (
                        "problems",
                        "samples_per_problem",
                        "accuracy_metric",
                        "accuracy",
                        "accuracy_ci",
                        "model_tokens_mean",
                        "tool_tokens_mean",
                        "tool_use_share",
                        "tool_calls_per_trace",
                        "tool_errors_per_trace",
                    )
                },
            }
        )
    pairs = [
        compare_pair(names[i], solved[i], names[j], solved[j], n_resamples, confidence, seed).as_dict()
        for i, j in combinations(range(len(runs)), 2)
    ]
    return {
        "by_arm": by_arm,
        "bootstrap": {"resamples": n_resamples, "confidence": confidence, "seed": seed, "paired": True},
        "runs": rows,
        "pairs": pairs,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def pair_cells(pair: dict[str, Any]) -> list[str]:
    """One paired comparison's flip counts as table cells: "B vs A", shared problems, solved by B
    only, by A only, by both, by neither."""
    keys = ("shared", "b_only", "a_only", "both", "neither")
    return [f"{pair['b']} vs {pair['a']}", *(str(pair[k]) for k in keys)]


def comparison_markdown(comp: dict[str, Any]) -> str:
    from deep_math.evaluation.report import markdown_table

    title = "Three-arm comparison" if comp["by_arm"] else "Paired comparison"
    rows = []
    for r in comp["runs"]:
        ci = r["accuracy_ci"]
        acc = _pct(r["accuracy"]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")
        rows.append(
            [
                r["name"],
                r["label"],
                f"{r['problems']} x {r['samples_per_problem']}",
                acc,
                "-" if r["model_tokens_mean"] is None else f"{r['model_tokens_mean']:,.0f}",
                "-" if r["tool_tokens_mean"] is None else f"{r['tool_tokens_mean']:,.0f}",
                _pct(r["tool_use_share"]),
                "-" if r["tool_calls_per_trace"] is None else f"{r['tool_calls_per_trace']:.2f}",
            ]
        )
    lines = [f"## {title}", ""]
    lines += markdown_table(
        [
            "arm" if comp["by_arm"] else "run",
            "file label",
            "problems x k",
            "accuracy (maj@k)",
            "model tokens",
            "tool tokens",
            "tool use",
            "calls/trace",
        ],
        rows,
    )
    boot = comp["bootstrap"]
    pair_rows = []
    for p in comp["pairs"]:
        ci = p["interval"]
        diff = f"{100 * p['difference']:+.1f}" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
        pair_rows.append([*pair_cells(p), diff])
    lines += ["", "### Flips between arms" if comp["by_arm"] else "### Flips between runs", ""]
    lines += markdown_table(
        [
            "B vs A",
            "shared problems",
            "solved by B only",
            "solved by A only",
            "both",
            "neither",
            "B - A (points)",
        ],
        pair_rows,
    )
    lines += [
        "",
        f"A problem counts as solved when its maj@k answer is correct. B - A: accuracy difference on the "
        f"shared problems with a paired bootstrap {100 * boot['confidence']:.0f}% interval "
        f"({boot['resamples']} resamples of the problems, the same ones for both arms; seed {boot['seed']}).",
    ]
    return "\n".join(lines) + "\n"
