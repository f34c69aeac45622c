"""Training curves as files: a CSV of every logged metric, a markdown table and a PNG.

Written into the output folder at the end of `python training.py`, from the trainer's log history
(which a resumed run restores from its checkpoint, so the files cover the whole run). For a run
still going, or one that stopped, read the newest checkpoint:

    python -m deep_math.training.report outputs/training [--no-plot]

Files: training_log.csv (one row per logged step, every metric TRL and the rollout logged),
training_summary.md (the main metrics, at most `max_rows` steps) and training_curves.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from deep_math.evaluation.report import markdown_table

# (log key, column title, format); rewards/<name>/mean columns are added for every reward logged.
MAIN_COLUMNS = [
    ("reward", "reward", "{:.3f}"),
    ("agent/used_tool", "used tool", "{:.2f}"),
    ("agent/tool_calls", "tool calls", "{:.2f}"),
    ("agent/trace_errors", "trace errors", "{:.2f}"),
    ("completions/mean_length", "length", "{:.0f}"),
    ("dev/accuracy", "dev acc", "{:.3f}"),
    ("dev/model_tokens", "dev tokens", "{:.0f}"),
    ("completions/clipped_ratio", "clipped", "{:.2f}"),
    ("frac_reward_zero_std", "no-signal groups", "{:.2f}"),
    ("kl", "KL", "{:.4f}"),
    ("entropy", "entropy", "{:.2f}"),
    ("temperature", "temp", "{:.3f}"),
    ("learning_rate", "lr", "{:.2e}"),
    ("step_time", "s/step", "{:.1f}"),
]
# The terminal table: few enough columns for an 80-column terminal.
TERMINAL_KEYS = {
    "step",
    "reward",
    "agent/used_tool",
    "completions/mean_length",
    "kl",
    "temperature",
    "step_time",
}
SUMMARY_KEYS = ("train_runtime", "train_loss", "train_samples_per_second")


def read_log_history(path: str | Path) -> list[dict[str, Any]]:
    """The log history of a training folder (its own trainer_state.json, else its newest complete
    checkpoint's), of a checkpoint folder, or of a trainer_state.json file."""
    from deep_math.training.checkpoints import STATE_FILE, checkpoint_dirs, read_state

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; pass a run's train.output_dir, a checkpoint-N folder in it, or a "
            "trainer_state.json"
        )
    if path.is_dir():
        folders = [path, *checkpoint_dirs(path)]
        state = next((st for f in folders if (st := read_state(f)) is not None), None)
        if state is None:
            raise FileNotFoundError(
                f"{path} has no readable {STATE_FILE} and no checkpoint-N/{STATE_FILE}; pass the "
                "train.output_dir of a run that saved at least one checkpoint (train.save_steps)"
            )
    else:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the trainer state {path}: {exc}") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ValueError(f"{path} has no 'log_history' list; is it a transformers trainer_state.json?")
    return state["log_history"]


def step_rows(log_history: list[dict[str, Any]]) -> tuple[list[dict[str, float]], dict[str, float]]:
    """(one row per logged step, entries of the same step merged, in step order; the end-of-run
    summary: runtime, mean loss...)."""
    by_step: dict[int, dict[str, float]] = {}
    summary: dict[str, float] = {}
    for entry in log_history:
        if any(k in entry for k in SUMMARY_KEYS):
            summary.update({k: v for k, v in entry.items() if k != "step"})
            continue
        if "step" not in entry:
            continue
        row = by_step.setdefault(int(entry["step"]), {"step": int(entry["step"])})
        row.update(
            {k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
    return [by_step[s] for s in sorted(by_step)], summary


def reward_keys(rows: list[dict[str, float]]) -> list[str]:
    keys = {k for row in rows for k in row if k.startswith("rewards/") and k.endswith("/mean")}
    return sorted(keys)


def main_columns(rows: list[dict[str, float]], terminal: bool = False) -> list[tuple[str, str, str]]:
    present = {k for row in rows for k in row}
    rewards = [(k, k.split("/")[1], "{:.3f}") for k in reward_keys(rows)]
    main = [c for c in MAIN_COLUMNS[1:] if not terminal or c[0] in TERMINAL_KEYS]
    columns = [("step", "step", "{}"), MAIN_COLUMNS[0], *rewards, *main]
    return [c for c in columns if c[0] in present]


def _cell(row: dict[str, float], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return fmt.format(value)


def pick_rows(rows: list[dict[str, float]], max_rows: int) -> list[dict[str, float]]:
    """At most max_rows rows, evenly spaced, always the first and the last."""
    if len(rows) <= max_rows:
        return rows
    idx = sorted({round(i * (len(rows) - 1) / (max_rows - 1)) for i in range(max_rows)})
    return [rows[i] for i in idx]


def summary_markdown(rows: list[dict[str, float]], summary: dict[str, float], max_rows: int = 20) -> str:
    columns = main_columns(rows)
    shown = pick_rows(rows, max_rows)
    header = [title for _, title, _ in columns]
    lines = [*markdown_table(header, [[_cell(r, k, f) for k, _, f in columns] for r in shown]), ""]
    note = f"{len(rows)} logged steps" + (f", {len(shown)} shown" if len(shown) < len(rows) else "")
    if "train_runtime" in summary:
        note += f"; this run's training time {summary['train_runtime']:.0f} s"
    lines.append(
        note + ". reward = the weighted sum; reward columns are each reward's mean (unweighted); "
        "used tool / tool calls / trace errors are per trace; length = mean completion tokens; every "
        "logged metric is in training_log.csv."
    )
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, float]], path: Path) -> None:
    keys = ["step"] + sorted({k for row in rows for k in row} - {"step"})
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


# (panel title, [(log key, label)]); a panel is drawn when one of its keys was logged.
PANELS = [
    ("reward", None),  # the total and each reward's mean
    ("tool use (per trace)", [("agent/used_tool", "used a tool"), ("agent/tool_calls", "tool calls"),
                              ("agent/trace_errors", "trace errors")]),
    ("completion length (tokens; band: min-max)", [("completions/mean_length", "mean")]),
    ("fixed dev set (greedy)", [("dev/accuracy", "accuracy"), ("dev/used_tool", "used a tool")]),
    ("dev model tokens (mean per trace)", [("dev/model_tokens", "model tokens")]),
    ("KL to the reference", [("kl", "KL")]),
    ("entropy", [("entropy", "entropy")]),
    ("groups with equal rewards (advantage 0: no learning signal)", [("frac_reward_zero_std", "share")]),
    ("sampling / loss temperature", [("temperature", "temperature")]),
]  # fmt: skip


def plot_curves(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    present = {k for row in rows for k in row}
    panels = []
    for title, series in PANELS:
        if series is None:
            series = [("reward", "total (weighted)")] + [(k, k.split("/")[1]) for k in reward_keys(rows)]
        series = [(k, label) for k, label in series if k in present]
        if series:
            panels.append((title, series))
    cols = 3 if len(panels) > 4 else 2
    nrows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    marker = "o" if len(rows) <= 50 else None
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        for key, label in series:
            points = [(r["step"], r[key]) for r in rows if key in r and not math.isnan(r[key])]
            if points:
                ax.plot(*zip(*points, strict=True), marker=marker, markersize=3, label=label)
            if key == "completions/mean_length":
                band = [
                    (r["step"], r.get("completions/min_length"), r.get("completions/max_length"))
                    for r in rows
                ]
                band = [b for b in band if b[1] is not None and b[2] is not None]
                if band:
                    ax.fill_between(*zip(*band, strict=True), alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("DeepMath GRPO training", fontsize=11)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_training_report(
    log_history: list[dict[str, Any]], out_dir: str | Path, plot: bool = True, max_rows: int = 20
) -> dict[str, str]:
    """Write training_log.csv, training_summary.md and (plot=True) training_curves.png into out_dir;
    returns their paths by kind. Raises ValueError when nothing was logged."""
    rows, summary = step_rows(log_history)
    if not rows:
        raise ValueError("the log history has no logged step (set train.logging_steps to log metrics)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"log": out / "training_log.csv", "summary": out / "training_summary.md"}
    write_csv(rows, paths["log"])
    paths["summary"].write_text(summary_markdown(rows, summary, max_rows), encoding="utf-8")
    if plot:
        paths["plot"] = out / "training_curves.png"
        plot_curves(rows, paths["plot"])
    return {k: str(v) for k, v in paths.items()}


def print_table(log_history: list[dict[str, Any]], max_rows: int = 20) -> None:
    """The main metrics per step in the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    rows, _ = step_rows(log_history)
    columns = main_columns(rows, terminal=True)
    table = Table(title="DeepMath GRPO training (all metrics: training_log.csv)")
    for _, title, _ in columns:
        table.add_column(title, justify="right", no_wrap=True)
    for row in pick_rows(rows, max_rows):
        table.add_row(*(_cell(row, k, f) for k, _, f in columns))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deep_math.training.report",
        description="Training curves (CSV, markdown table, PNG) of a training output folder or checkpoint.",
    )
    parser.add_argument("path", help="train.output_dir, a checkpoint-N folder, or a trainer_state.json")
    parser.add_argument("--out", help="where to write the files (default: the training output folder)")
    parser.add_argument("--no-plot", action="store_true", help="skip training_curves.png")
    parser.add_argument("--max-rows", type=int, default=20, help="steps shown in the table (default 20)")
    args = parser.parse_args(argv)
    try:
        history = read_log_history(args.path)
        source = Path(args.path)
        out = args.out or (source.parent if source.is_file() else source)
        if not args.out and out.name.startswith("checkpoint-"):
            out = out.parent
        paths = write_training_report(history, out, plot=not args.no_plot, max_rows=args.max_rows)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print_table(history, args.max_rows)
    sys.stdout.write("".join(f"{kind}: {path}\n" for kind, path in paths.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
