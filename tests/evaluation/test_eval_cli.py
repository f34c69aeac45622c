"""evaluation.py end to end: the paper's multi-file comparison command as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from deep_math.evaluation.cli import quote_list_overrides
from deep_math.testing import REPO


def _record(pid, target, texts, tokens=(100,), tool=(0,), reason="answer"):
    samples = [
        {
            "text": t,
            "model_tokens": tokens[i % len(tokens)],
            "tool_tokens": tool[i % len(tool)],
            "tool_calls": int("<tool_call>" in t),
            "tool_errors": 0,
            "tool_timeouts": 0,
            "steps": 1,
            "finish_reason": reason,
        }
        for i, t in enumerate(texts)
    ]
    return {
        "id": pid,
        "problem": "?",
        "target": target,
        "text": texts,
        "samples": samples,
        "meta": {"model": "m"},
    }


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_quote_list_overrides():
    argv = ["evaluation.py", "generated_file=a.jsonl,b.jsonl", "limit=2", "labels=[x,y]"]
    assert quote_list_overrides(argv) == [
        "evaluation.py",
        "generated_file='a.jsonl,b.jsonl'",
        "limit=2",
        "labels=[x,y]",
    ]
    assert quote_list_overrides(["e.py", "--multirun", "generated_file=a,b"])[2] == "generated_file=a,b"


def test_multi_file_comparison(tmp_path):
    tool = "<tool_call>\nprint(2)\n</tool_call>\n```output\n2\n```\n"
    a = _write(
        tmp_path / "agent.jsonl",
        [
            _record(
                "p1",
                "2",
                [tool + r"\boxed{2}", tool + r"\boxed{\frac{4}{2}}", r"\boxed{3}"],
                tokens=(50,),
                tool=(4,),
            ),
            _record("p2", r"\frac12", [r"\boxed{0.5}", r"\boxed{1}", r"\boxed{0.5}"], tokens=(50,)),
            '{"broken": ',
            _record("p3", "7", [r"\boxed{7}"] * 3, tokens=(50,)),
        ],
    )
    b = _write(
        tmp_path / "baseline.jsonl",
        [
            {
                "text": [r"\boxed{3}", r"\boxed{3}", r"\boxed{2}"],
                "target": "2",
            },  # minimal form, wrong majority
            {"text": r"\boxed{1/2}", "target": r"\frac12"},
            {"text": [r"<think>long", r"\boxed{8}"], "target": "7"},
        ],
    )
    tok = tmp_path / "tok"
    _make_tokenizer(tok)
    out = tmp_path / "res"
    cmd = [
        sys.executable,
        str(REPO / "evaluation.py"),
        f"generated_file={a},{b}",
        "workers=2",
        f"tokenizer={tok}",
        f"results_file={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "progress=false",
        "metrics.0.bootstrap=200",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res_a = yaml.safe_load((out / "agent-results.yaml").read_text())
    res_b = yaml.safe_load((out / "baseline-results.yaml").read_text())
    assert res_a["summary"]["accuracy"] == 1.0 and res_a["metrics"]["maj@3"] == 1.0
    assert res_a["summary"]["model_tokens_mean"] == 50.0
    assert res_a["malformed_lines"][0].startswith(f"{a}:3:")
    assert res_a["metrics"]["pass@1"] == round((2 / 3 + 2 / 3 + 1) / 3, 6)
    # baseline: k = 1 (a problem with one sample), the first sample of each is 3 / 1/2 / nothing
    assert res_b["summary"]["accuracy_metric"] == "maj@1"
    assert res_b["summary"]["accuracy"] == round(1 / 3, 6)
    assert res_b["lengths_measured_with_tokenizer"] == 6
    rows = [json.loads(line) for line in (out / "baseline-per-example.jsonl").read_text().splitlines()]
    assert rows[0]["answers"] == ["3", "3", "2"] and rows[0]["correct"] == [False, False, True]
    assert rows[0]["majority_answer"] == "3" and rows[0]["majority_correct"] is False
    assert set(rows[0]) >= {
        "index",
        "id",
        "target",
        "answers",
        "correct",
        "majority_answer",
        "majority_correct",
    }
    assert rows[2]["answers"] == [None, "8"]
    md = (out / "comparison.md").read_text()
    assert "| agent |" in md and "| baseline |" in md and "accuracy (maj@k)" in md
    assert (out / "comparison.png").stat().st_size > 1000
    assert "comparison" in proc.stdout and "agent" in proc.stdout
    # no arm in these records' meta: the pairs are named by run label
    assert "Paired comparison" in md and "baseline vs agent" in md
    assert "Accuracy against token budget" in md and "| ≤1k |" in md
    assert (out / "comparison-budget.png").stat().st_size > 1000
    assert (out / "agent-budget.png").stat().st_size > 1000
    assert res_a["budget"]["table"][1024]["maj"] == 1.0
    assert (out / "comparison.html").read_text().startswith("<!doctype html>")
    assert "trace viewer" in proc.stdout


def test_unknown_key_fails_listing_valid_keys(tmp_path):
    f = _write(tmp_path / "x.jsonl", [{"text": r"\boxed{1}", "target": "1"}])
    cmd = [
        sys.executable,
        str(REPO / "evaluation.py"),
        f"generated_file={f}",
        "+workerz=2",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "workerz" in proc.stderr and "Valid keys" in proc.stderr and "workers" in proc.stderr


def _make_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]").save_pretrained(
        folder
    )
