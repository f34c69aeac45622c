"""Three arms from the records' meta: arm detection, flips and the paired bootstrap interval,
end to end through evaluation.py on three hand-built files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from deep_math.evaluation.arms import arm_of_meta, arm_of_problems, compare_pair, paired_bootstrap
from deep_math.testing import REPO

# meta as deep_math/inference/run.py writes it (the keys that decide the arm)
META = {
    "no_tool": {"model": "m", "agent": False, "lora_path": None, "engine": "transformers"},
    "tool_available": {"model": "m", "agent": True, "lora_path": None, "engine": "transformers"},
    "tool_trained": {"model": "m", "agent": True, "lora_path": "out/adapter", "engine": "transformers"},
}


@pytest.mark.parametrize(
    ("meta", "arm"),
    [
        (META["no_tool"], "no_tool"),
        (META["tool_available"], "tool_available"),
        (META["tool_trained"], "tool_trained"),
        ({"agent": False, "lora_path": "a"}, "no_tool_trained"),
        ({**META["no_tool"], "arm": "tool_trained"}, "tool_trained"),  # explicit arm wins
        ({"arm": "Tool trained"}, "tool_trained"),
        ({"arm": "python-sandbox v2"}, "python-sandbox v2"),  # a custom arm, as written
        ({"model": "m"}, None),  # no agent key: cannot tell
        ({}, None),
    ],
)
def test_arm_of_meta(meta, arm):
    assert arm_of_meta(meta) == arm


def test_file_with_mixed_arms_has_none(caplog):
    from deep_math.evaluation.records import GeneratedProblem, Sample

    def problem(meta):
        return GeneratedProblem(0, 1, "p", "1", [Sample("x")], meta)

    assert arm_of_problems([problem(META["no_tool"]), problem(META["no_tool"])]) == "no_tool"
    assert arm_of_problems([problem(META["no_tool"]), problem(META["tool_trained"])], "f.jsonl") is None
    assert "disagree" in caplog.text


def test_paired_interval_is_seeded_and_pairing_narrows_it():
    rng = np.random.default_rng(1)
    a = (rng.random(200) < 0.5).astype(float)
    b = a.copy()
    b[:30] = 1.0  # B solves everything A solves plus some
    first = paired_bootstrap(a, b, 2000, 0.95, seed=3)
    assert first == paired_bootstrap(a, b, 2000, 0.95, seed=3)
    assert first[0] > 0  # B is better on every resample that matters
    # identical arms: the difference is exactly 0 on every resample
    assert paired_bootstrap(a, a, 500) == [0.0, 0.0]


def test_compare_pair_counts_flips():
    a = {"p1": True, "p2": True, "p3": False, "p4": False, "only_a": True}
    b = {"p1": True, "p2": False, "p3": True, "p4": False, "only_b": True}
    pair = compare_pair("A", a, "B", b, n_resamples=100)
    assert (pair.shared, pair.both, pair.a_only, pair.b_only, pair.neither) == (4, 1, 1, 1, 1)
    assert pair.a_only_ids == ["p2"] and pair.b_only_ids == ["p3"]
    assert pair.difference == 0.0


def _record(pid: int, solved: bool, meta: dict) -> dict:
    text = "so \\boxed{" + str(pid if solved else pid + 1000) + "}"
    sample = {
        "text": text,
        "model_tokens": 10,
        "tool_tokens": 0,
        "tool_calls": 0,
        "tool_errors": 0,
        "tool_timeouts": 0,
        "steps": 1,
        "finish_reason": "answer",
    }
    return {
        "id": f"q{pid}",
        "problem": "?",
        "target": str(pid),
        "text": text,
        "samples": [sample],
        "meta": meta,
    }


def _write(path: Path, solved: set[int], meta: dict, n: int = 20) -> Path:
    path.write_text("".join(json.dumps(_record(i, i in solved, meta)) + "\n" for i in range(n)))
    return path


def test_three_arm_report_end_to_end(tmp_path):
    # 20 problems, one sample each. Hand-counted flips:
    #   no tool:        solves 0-9                       (10/20)
    #   tool available: solves 0-5, 10, 11              (8/20)  vs no tool: 4 lost (6-9), 2 gained
    #   tool trained:   solves 0-17                      (18/20) vs no tool: 8 gained, 0 lost
    #                                                            vs tool available: 10 gained, 0 lost
    files = {
        # file names say nothing about the arm: it must come from meta
        "run_c.jsonl": (set(range(18)), META["tool_trained"]),
        "run_a.jsonl": (set(range(10)), META["no_tool"]),
        "run_b.jsonl": ({0, 1, 2, 3, 4, 5, 10, 11}, META["tool_available"]),
    }
    paths = [_write(tmp_path / name, solved, meta) for name, (solved, meta) in files.items()]
    out = tmp_path / "res"
    cmd = [
        sys.executable,
        str(REPO / "evaluation.py"),
        "generated_file=" + ",".join(map(str, paths)),
        "workers=0",
        f"results_file={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "progress=false",
        "plot=false",
        "metrics.0.bootstrap=100",
        "arms.bootstrap=2000",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    arms = yaml.safe_load((out / "comparison-arms.yaml").read_text())
    assert arms["by_arm"] is True
    assert [r["arm"] for r in arms["runs"]] == ["no_tool", "tool_available", "tool_trained"]
    assert [r["accuracy"] for r in arms["runs"]] == [0.5, 0.4, 0.9]
    pairs = {(p["a"], p["b"]): p for p in arms["pairs"]}
    avail = pairs[("no tool", "tool available")]
    assert (avail["a_only"], avail["b_only"], avail["both"], avail["neither"]) == (4, 2, 6, 8)
    assert avail["difference"] == pytest.approx(-0.1)
    assert avail["interval"][0] < 0  # the drop can be real; the interval reaches below 0
    trained = pairs[("no tool", "tool trained")]
    assert (trained["a_only"], trained["b_only"]) == (0, 8)
    assert trained["difference"] == pytest.approx(0.4)
    assert 0 < trained["interval"][0] <= 0.4 <= trained["interval"][1]  # excludes 0: B is better
    over_avail = pairs[("tool available", "tool trained")]
    assert (over_avail["a_only"], over_avail["b_only"]) == (0, 10)
    assert over_avail["interval"][0] > 0
    md = (out / "comparison.md").read_text()
    assert "Three-arm comparison" in md and "tool trained vs no tool" in md
    assert "Accuracy against token budget" in md
    # the same order and numbers in the viewer
    page = (out / "comparison.html").read_text()
    assert "Three-arm comparison" in page and page.index("no tool") < page.index("tool trained")
