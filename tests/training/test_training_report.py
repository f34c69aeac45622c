"""Training curves from the trainer's log history: CSV, markdown table, PNG, and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from deep_math.training.report import (
    main,
    pick_rows,
    read_log_history,
    step_rows,
    summary_markdown,
    write_training_report,
)


def history(steps: int = 3) -> list[dict]:
    entries = []
    for step in range(1, steps + 1):
        entries.append(
            {
                "step": step,
                "loss": 0.1 * step,
                "reward": 0.5 + 0.1 * step,
                "rewards/accuracy/mean": 0.25 * step,
                "rewards/brevity/mean": 1.0 / step,
                "agent/used_tool": 0.5,
                "completions/mean_length": 100.0 + step,
                "completions/min_length": 50.0,
                "completions/max_length": 150.0,
                "temperature": 1.2 - 0.001 * step,
                "epoch": 0.1 * step,
            }
        )
    entries.append({"step": 2, "eval_reward": 0.7})  # an evaluation logged at step 2: same row
    entries.append({"step": steps, "train_runtime": 12.5, "train_loss": 0.2, "epoch": 0.3})
    return entries


def test_one_row_per_step_and_the_run_summary_apart():
    rows, summary = step_rows(history(3) + [{"step": 3, "note": "text is not a metric"}])
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["eval_reward"] == 0.7 and rows[1]["loss"] == pytest.approx(0.2)
    assert "eval_reward" not in rows[0] and "note" not in rows[2]
    assert summary == {"train_runtime": 12.5, "train_loss": 0.2, "epoch": 0.3}
    assert all("train_runtime" not in r for r in rows)


@pytest.mark.parametrize(("n", "max_rows"), [(5, 20), (100, 20), (21, 20), (7, 2)])
def test_pick_rows_keeps_first_and_last_and_stays_within_max(n, max_rows):
    rows = [{"step": i} for i in range(1, n + 1)]
    picked = pick_rows(rows, max_rows)
    assert picked[0]["step"] == 1 and picked[-1]["step"] == n
    assert len(picked) == min(n, max_rows)
    assert [r["step"] for r in picked] == sorted({r["step"] for r in picked})


def test_table_has_every_reward_and_skips_metrics_never_logged():
    rows, summary = step_rows(history(3))
    md = summary_markdown(rows, summary)
    header = md.splitlines()[0]
    assert "accuracy" in header and "brevity" in header  # a custom reward gets its column
    assert "KL" not in header  # beta 0: TRL logs no kl
    assert "| 3 | 0.800 | 0.750 | 0.333 |" in md
    assert "3 logged steps" in md and "12 s" in md


def test_groups_without_learning_signal_get_a_column():
    """TRL's frac_reward_zero_std: the share of groups whose rewards are all equal (advantage 0)."""
    entries = history(2)
    entries[1]["frac_reward_zero_std"] = 0.75
    rows, summary = step_rows(entries)
    md = summary_markdown(rows, summary)
    columns = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert "no-signal groups" in columns
    last = [c.strip() for c in md.splitlines()[3].strip("|").split("|")]
    assert last[0] == "2" and last[columns.index("no-signal groups")] == "0.75"


def test_report_files(tmp_path):
    paths = write_training_report(history(4), tmp_path / "run")
    with open(paths["log"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert float(rows[3]["rewards/brevity/mean"]) == pytest.approx(0.25)
    assert rows[0]["eval_reward"] == "" and float(rows[1]["eval_reward"]) == 0.7
    assert Path(paths["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert "brevity" in Path(paths["summary"]).read_text()
    assert not list((tmp_path / "run").glob("*.tmp*"))

    no_plot = write_training_report(history(2), tmp_path / "np", plot=False)
    assert "plot" not in no_plot and not (tmp_path / "np" / "training_curves.png").exists()


def test_nothing_logged_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="logging_steps"):
        write_training_report([{"train_runtime": 1.0, "step": 0}], tmp_path)


def test_reads_the_newest_checkpoint(tmp_path):
    for step in (9, 10):  # numeric order: checkpoint-10 is newer than checkpoint-9
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": history(step)}))
    rows, _ = step_rows(read_log_history(tmp_path))
    assert rows[-1]["step"] == 10
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="save_steps"):
        read_log_history(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_log_history(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="log_history"):
        read_log_history(tmp_path / "bad.json")


def test_cli_writes_next_to_the_run_and_explains_errors(tmp_path, capsys):
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": history(2)}))
    assert main([str(ckpt), "--no-plot"]) == 0
    assert (tmp_path / "training_log.csv").is_file() and not (ckpt / "training_log.csv").exists()
    assert "training_summary.md" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    assert "does not exist" in capsys.readouterr().err
