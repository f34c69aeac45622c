"""Outputs: per-file results YAML and per-example JSONL, the multi-run comparison table
(markdown, as in the paper's Table 1 plus extras) with the arms' flips and paired intervals and
the accuracy-against-budget table, the plots (accuracy vs length, accuracy vs budget), the HTML
trace viewer, terminal tables."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from deep_math.evaluation import arms as arms_mod
from deep_math.evaluation import budget
from deep_math.evaluation.arms import arm_title
from deep_math.evaluation.config import ArmsConfig

if TYPE_CHECKING:
    from deep_math.evaluation.run import EvaluatedRun

log = logging.getLogger(__name__)

# (column title, summary key, format) of the comparison table; the first two are the paper's.
COLUMNS = [
    ("accuracy (maj@k)", "accuracy", "pct_ci"),
    ("length (model tokens)", "model_tokens_mean", "int"),
    ("tool tokens", "tool_tokens_mean", "int"),
    ("mean@k", "mean", "pct"),
    ("pass@1", "pass@1", "pct"),
    ("pass@k", "pass@k", "pct"),
    ("no answer", "no_answer_rate", "pct"),
    ("truncated", "truncation_rate", "pct"),
    ("tool use", "tool_use_share", "pct"),
    ("calls/trace", "tool_calls_per_trace", "float"),
    ("acc. with tool", "accuracy_with_tool", "pct"),
    ("acc. w/o tool", "accuracy_without_tool", "pct"),
    ("ties", "ties", "raw"),
    ("grading timeouts", "grading_timeouts", "raw"),
]


def _first(values: dict[str, Any], prefix: str) -> tuple[str | None, Any]:
    """The first `<prefix><k>` entry (e.g. `maj@16`) of the metric values."""
    for key, value in values.items():
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            return key, value
    return None, None


def _last_pass(values: dict[str, Any]) -> tuple[str | None, Any]:
    keys = [k for k in values if k.startswith("pass@") and k[5:].isdigit()]
    if not keys:
        return None, None
    key = max(keys, key=lambda k: int(k[5:]))
    return key, values[key]


def summary(run: EvaluatedRun) -> dict[str, Any]:
    """The headline numbers of one run (keys as in COLUMNS), from whichever metrics were configured."""
    v = run.values
    maj_key, acc = _first(v, "maj@")
    mean_key, mean = _first(v, "mean@")
    pass_key, pass_k = _last_pass(v)
    out: dict[str, Any] = {
        "problems": len(run.results),
        "samples_per_problem": min((len(r.grades) for r in run.results), default=0),
        "accuracy_metric": maj_key,
        "accuracy": acc,
        "accuracy_ci": list(v[f"{maj_key}_ci"]) if v.get(f"{maj_key}_ci") else None,
        "mean_metric": mean_key,
        "mean": mean,
        "pass@1": v.get("pass@1"),
        "pass_metric": pass_key,
        "pass@k": pass_k,
        "ties": v.get(f"{maj_key}_ties"),
        "grading_timeouts": run.grading.get("timeout", 0),
        "grading_errors": run.grading.get("error", 0),
        "malformed_lines": len(run.malformed),
        "arm": run.arm,
    }
    for key in (
        "model_tokens_mean",
        "tool_tokens_mean",
        "no_answer_rate",
        "truncation_rate",
        "tool_use_share",
        "tool_calls_per_trace",
        "tool_errors_per_trace",
        "accuracy_with_tool",
        "accuracy_without_tool",
    ):
        out[key] = v.get(key)
    return out


def output_paths(generated: Path, results_file: str | None, multiple: bool) -> tuple[Path, Path]:
    """(results YAML, per-example JSONL) for one generated file."""
    stem = generated.stem
    if results_file is None:
        folder = generated.parent
    elif not multiple and str(results_file).endswith((".yaml", ".yml")):
        results = Path(results_file)
        return results, results.with_name(f"{stem}-per-example.jsonl")
    else:
        folder = Path(results_file)
    return folder / f"{stem}-results.yaml", folder / f"{stem}-per-example.jsonl"


def _budget_doc(budget: dict[str, Any] | None) -> dict[str, Any] | None:
    """The budget report for YAML: the table and the no-cut numbers, without the curve's points."""
    if budget is None:
        return None
    return {k: v for k, v in budget.items() if k != "curve"}


def write_run(
    run: EvaluatedRun, results_file: str | None, multiple: bool = False, plot: bool = True
) -> dict[str, str]:
    results_path, examples_path = output_paths(run.path, results_file, multiple)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "generated_file": str(run.path),
        "label": run.label,
        "arm": run.arm,
        "summary": summary(run),
        "metrics": run.values,
        "budget": _budget_doc(run.budget),
        "grading": run.grading,
        "lengths_measured_with_tokenizer": run.lengths_measured,
        "malformed_lines": run.malformed,
    }
    results_path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    with open(examples_path, "w", encoding="utf-8") as fh:
        for r in run.results:
            vote = r.majority()
            row = {
                "index": r.problem.index,
                "id": r.problem.id,
                "target": r.problem.target,
                "answers": r.answers,
                "correct": r.correct,
                "majority_answer": vote.answer,
                "majority_correct": vote.correct,
                "majority_tie": vote.tie,
                "groups": r.groups,
                "grading_status": [g.status for g in r.grades],
                "line": r.problem.line,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    log.info("wrote %s and %s", results_path, examples_path)
    out = {"results": str(results_path), "per_example": str(examples_path)}
    if plot and run.budget is not None:
        png = results_path.with_name(f"{run.path.stem}-budget.png")
        budget.plot_curves([(_name(run), run.budget)], png, f"{_name(run)}: accuracy against token budget")
        out["budget_plot"] = str(png)
    return out


def _name(run: EvaluatedRun) -> str:
    return f"{run.label} ({arm_title(run.arm)})" if run.arm else run.label


def _fmt(value: Any, kind: str, ci: Any = None) -> str:
    if value is None:
        return "-"
    if kind == "pct_ci":
        text = f"{100 * value:.1f}"
        return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text
    if kind == "pct":
        return f"{100 * value:.1f}"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "float":
        return f"{value:.2f}"
    return str(value)


def table_rows(runs: list[EvaluatedRun]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "problems x k"] + [title for title, _, _ in COLUMNS]
    rows = []
    for run in runs:
        s = summary(run)
        cells = [_name(run), f"{s['problems']} x {s['samples_per_problem']}"]
        cells += [_fmt(s.get(key), kind, s.get("accuracy_ci")) for _, key, kind in COLUMNS]
        rows.append(cells)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines: the header, the separator, one line per row."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def comparison_markdown(runs: list[EvaluatedRun], paired: dict[str, Any] | None = None) -> str:
    header, rows = table_rows(runs)
    first = summary(runs[0])
    lines = [
        *markdown_table(header, rows),
        "",
        f"accuracy = {first['accuracy_metric']} (answers grouped by math-verify equivalence, ties to the "
        "earliest answer) with a 95% bootstrap interval over problems; pass@k = "
        f"{first['pass_metric']}; percentages except lengths (mean tokens per trace); "
        "files: " + ", ".join(f"`{r.path}`" for r in runs),
    ]
    if paired is not None:
        lines += ["", arms_mod.comparison_markdown(paired).rstrip("\n")]
    with_budget = [(_name(r), r.budget) for r in arms_mod.ordered(runs) if r.budget is not None]
    if with_budget:
        lines += ["", "## Accuracy against token budget (maj@k, %)", ""]
        lines += budget.table_markdown(with_budget)
        lines += [
            "",
            "A trace cut at a budget counts only if its answer was boxed within it; model and tool tokens "
            "both count; k = 1024 tokens. Positions are estimated from the text (see "
            "deep_math/evaluation/budget.py).",
        ]
    return "\n".join(lines) + "\n"


def comparison_paths(runs: list[EvaluatedRun], comparison_file: str | None) -> tuple[Path, Path]:
    if comparison_file:
        md = Path(comparison_file)
    else:
        md = Path(runs[0].outputs.get("results", runs[0].path)).parent / "comparison.md"
    return md, md.with_suffix(".png")


def paired_comparison(runs: list[EvaluatedRun], cfg: ArmsConfig | None = None) -> dict[str, Any]:
    cfg = cfg or ArmsConfig()
    return arms_mod.compare_runs(runs, cfg.bootstrap, cfg.confidence, cfg.seed)


def write_comparison(
    runs: list[EvaluatedRun],
    comparison_file: str | None,
    plot: bool = True,
    paired: dict[str, Any] | None = None,
) -> dict[str, str]:
    """comparison.md (table, arms with flips and paired intervals, budget table), comparison.yaml
    (summaries), comparison-arms.yaml (the paired comparison), and the plots."""
    md_path, png_path = comparison_paths(runs, comparison_file)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    paired = paired if paired is not None else paired_comparison(runs)
    md_path.write_text(comparison_markdown(runs, paired), encoding="utf-8")
    yaml_path = md_path.with_suffix(".yaml")
    yaml_path.write_text(
        yaml.safe_dump({r.label: summary(r) for r in runs}, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    arms_path = md_path.with_name(f"{md_path.stem}-arms.yaml")
    arms_path.write_text(yaml.safe_dump(paired, sort_keys=False, allow_unicode=True), encoding="utf-8")
    out = {"comparison": str(md_path), "comparison_yaml": str(yaml_path), "arms": str(arms_path)}
    if plot:
        plot_accuracy_vs_length(runs, png_path)
        out["plot"] = str(png_path)
        with_budget = [(_name(r), r.budget) for r in arms_mod.ordered(runs) if r.budget is not None]
        if with_budget:
            budget_png = md_path.with_name(f"{md_path.stem}-budget.png")
            budget.plot_curves(with_budget, budget_png)
            out["comparison_budget_plot"] = str(budget_png)
    for run in runs:
        run.outputs.update(out)
    return out


def plot_accuracy_vs_length(runs: list[EvaluatedRun], path: Path) -> None:
    """One point per run: mean model tokens (x) vs accuracy (y) with its bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for run in runs:
        s = summary(run)
        if s["accuracy"] is None or s["model_tokens_mean"] is None:
            continue
        acc, ci = 100 * s["accuracy"], s["accuracy_ci"]
        yerr = [[acc - 100 * ci[0]], [100 * ci[1] - acc]] if ci else None
        ax.errorbar(s["model_tokens_mean"], acc, yerr=yerr, fmt="o", capsize=4, label=run.label)
        ax.annotate(
            run.label, (s["model_tokens_mean"], acc), textcoords="offset points", xytext=(6, 6), fontsize=8
        )
    first = summary(runs[0])
    ax.set_xlabel("mean output length (model tokens per trace)")
    ax.set_ylabel(f"accuracy, {first['accuracy_metric'] or 'maj@k'} (%)")
    ax.set_title("Accuracy vs length (95% bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_summary(runs: list[EvaluatedRun]) -> None:
    """The comparison in the terminal (rich), one column per run so it fits narrow terminals."""
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(runs)
    table = Table(title="DeepMath evaluation")
    table.add_column("metric")
    for row in rows:
        table.add_column(row[0], justify="right")
    for i, name in enumerate(header[1:], start=1):
        table.add_row(name, *(row[i] for row in rows))
    Console().print(table)


def html_path(runs: list[EvaluatedRun], comparison_file: str | None) -> Path:
    """<stem>-report.html beside one run's results; comparison.html beside comparison.md."""
    if len(runs) == 1:
        results = Path(runs[0].outputs.get("results", runs[0].path))
        return results.with_name(f"{runs[0].path.stem}-report.html")
    return comparison_paths(runs, comparison_file)[0].with_suffix(".html")


def write_html(
    runs: list[EvaluatedRun],
    paired: dict[str, Any] | None = None,
    comparison_file: str | None = None,
    max_samples: int | None = None,
) -> str:
    """The self-contained trace viewer (see viewer.py); its path is recorded in every run's outputs."""
    from deep_math.evaluation.viewer import render_html

    path = html_path(runs, comparison_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(runs, paired, max_samples), encoding="utf-8")
    log.info("wrote %s", path)
    for run in runs:
        run.outputs["html"] = str(path)
    return str(path)
