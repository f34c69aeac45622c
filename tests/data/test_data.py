"""Problem loading: the bundled sample (answers re-derived), local files, keys, hub failure, dev split."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import sympy as sp

from deep_math.data import SAMPLE_FILE, DataError, Problem, load_problems, split_dev
from deep_math.testing import REPO, shared_data_dir

SHARED = shared_data_dir()
MATH500 = (SHARED or REPO.parent / "shared" / "data") / "math500.jsonl"


def _frac(q: Fraction) -> str:
    return f"\\frac{{{q.numerator}}}{{{q.denominator}}}"


def _lcm_pairs(n: int) -> int:
    divisors = sp.divisors(n)
    return sum(1 for a, b in itertools.product(divisors, repeat=2) if math.lcm(a, b) == n)


def _poly_power_sum() -> int:
    x = sp.symbols("x")
    return int(sum(r**4 for r in sp.roots(x**3 - 7 * x**2 + 14 * x - 8, x)))


def _integral() -> str:
    x = sp.symbols("x")
    assert sp.simplify(sp.integrate(x**2 * sp.exp(x), (x, 0, 1)) - (sp.E - 2)) == 0
    return "e - 2"


def _quarter_disc() -> str:
    assert sp.pi * 2**2 / 4 / 2**2 == sp.pi / 4
    return "\\frac{\\pi}{4}"


def _rectangle_diagonal() -> int:
    w, h = sp.symbols("w h", positive=True)
    (sol,) = [s for s in sp.solve([2 * (w + h) - 46, w * h - 120], [w, h]) if s[0] >= s[1]]
    return int(sp.sqrt(sol[0] ** 2 + sol[1] ** 2))


def _log_equation() -> int:
    x = sp.symbols("x", positive=True)
    return int(max(sp.solve(x * (x - 2) - 8, x)))


# Every bundled answer, re-derived by computation (ids -> function returning the answer string).
DERIVATIONS = {
    "sample-001": lambda: 17 + 25,
    "sample-002": lambda: 9 * 8,
    "sample-003": lambda: 100 - 37,
    "sample-004": lambda: 20 - 9,
    "sample-005": lambda: 86 // 2,
    "sample-006": lambda: 12 * 5,
    "sample-007": lambda: 27 // 3,
    "sample-008": lambda: 80 * 15 // 100,
    "sample-009": lambda: 23 - 8 + 14,
    "sample-010": lambda: (21 + 7) // 4,
    "sample-011": lambda: 100 % 7,
    "sample-012": lambda: 2**10,
    "sample-013": lambda: math.lcm(18, 24),
    "sample-014": lambda: max(sp.solve(sp.Symbol("x") ** 2 - 13 * sp.Symbol("x") + 36)),
    "sample-015": lambda: min(x * x - 6 * x + 14 for x in range(-10, 11)),
    "sample-016": lambda: sum(7 + 4 * k for k in range(10)),
    "sample-017": lambda: sum(k * k for k in range(1, 21)),
    "sample-018": lambda: sp.divisor_count(360),
    "sample-019": _rectangle_diagonal,
    "sample-020": lambda: math.perm(9, 4),
    "sample-021": lambda: _frac(
        Fraction(sum(1 for a, b in itertools.product(range(1, 7), repeat=2) if 6 in (a, b)), 36)
    ),
    "sample-022": _log_equation,
    "sample-023": lambda: sp.Matrix([[2, 1, 3], [0, 4, 5], [1, 0, 6]]).det(),
    "sample-024": lambda: sum(n for n in range(1, 50) if (n * n + 1) % 5 == 0),
    "sample-025": _poly_power_sum,
    "sample-026": lambda: _lcm_pairs(600),
    "sample-027": lambda: pow(3, 2025, 1000),
    "sample-028": lambda: sum(p for p in sp.primerange(2, 100) if sp.isprime(p + 2)),
    "sample-029": _quarter_disc,
    "sample-030": _integral,
    "sample-031": lambda: sum(1 for n in range(100000, 1000000) if sum(map(int, str(n))) == 10),
    "sample-032": lambda: sum(1 for n in range(1, 1001) if sp.isprime(n * n + n + 41)),
}


def _sample_rows() -> list[dict]:
    return [json.loads(line) for line in SAMPLE_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"id": f"q{i}", "problem": f"What is {i} + {i}?", "answer": 2 * i, "level": 1} for i in range(10)]


# --- bundled sample -----------------------------------------------------------------------------


def test_sample_file_is_well_formed():
    rows = _sample_rows()
    assert 25 <= len(rows) <= 40
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert ids == [f"sample-{i:03d}" for i in range(1, len(rows) + 1)]
    for r in rows:
        assert set(r) == {"id", "problem", "answer", "level", "subject"}
        assert isinstance(r["answer"], str) and r["answer"].strip()
        assert r["problem"].strip() and r["subject"].strip()
        assert r["level"] in range(1, 6)
    levels = [r["level"] for r in rows]
    assert levels == sorted(levels), "easy to hard: the smoke run uses limit=3..5"
    assert levels[:12] == [1] * 12
    assert max(levels) == 5


def test_every_sample_answer_is_rederived():
    rows = _sample_rows()
    assert set(DERIVATIONS) == {r["id"] for r in rows}
    for r in rows:
        assert str(DERIVATIONS[r["id"]]()) == r["answer"], r["id"]


@pytest.mark.parametrize("source", [None, "", "sample"])
def test_load_sample(source):
    problems = load_problems(source)
    assert len(problems) == len(_sample_rows())
    first = problems[0]
    assert isinstance(first, Problem)
    assert (first.id, first.answer) == ("sample-001", "42")
    assert first.extra == {"level": 1, "subject": "Prealgebra"}


def test_limit_keeps_the_easiest_first():
    assert [p.id for p in load_problems(limit=3)] == ["sample-001", "sample-002", "sample-003"]
    assert load_problems(limit=0) == []
    with pytest.raises(DataError, match="limit"):
        load_problems(limit=-1)


def test_shuffle_is_deterministic_and_applied_before_limit():
    a = load_problems(shuffle_seed=7, limit=5)
    b = load_problems(shuffle_seed=7, limit=5)
    c = load_problems(shuffle_seed=8, limit=5)
    assert [p.id for p in a] == [p.id for p in b]
    assert [p.id for p in a] != [p.id for p in c]
    everything = load_problems(shuffle_seed=7)
    assert sorted(p.id for p in everything) == [p.id for p in load_problems()]


# --- local files --------------------------------------------------------------------------------


def test_load_jsonl_relative_to_cwd(tmp_path, monkeypatch):
    _write_jsonl(tmp_path / "probs.jsonl", ROWS)
    monkeypatch.chdir(tmp_path)
    problems = load_problems("probs.jsonl")
    assert [p.id for p in problems] == [f"q{i}" for i in range(10)]
    assert problems[3] == Problem("q3", "What is 3 + 3?", "6", {"level": 1})


def test_load_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "probs.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    problems = load_problems(str(path), limit=4)
    assert [(p.id, p.answer) for p in problems] == [("q0", "0"), ("q1", "2"), ("q2", "4"), ("q3", "6")]


def test_load_json_list(tmp_path):
    path = tmp_path / "probs.json"
    path.write_text(json.dumps(ROWS[:2]), encoding="utf-8")
    assert [p.answer for p in load_problems(str(path))] == ["0", "2"]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_problems(str(tmp_path / "nope.jsonl"))


def test_rows_without_id_get_their_index(tmp_path):
    rows = [{"problem": r["problem"], "answer": r["answer"]} for r in ROWS]
    path = _write_jsonl(tmp_path / "noid.jsonl", rows)
    assert [p.id for p in load_problems(str(path), shuffle_seed=1, limit=3)] == [
        str(i) for i in _shuffled_indices(1, 10)[:3]
    ]


def _shuffled_indices(seed: int, n: int) -> list[int]:
    import random

    indices = list(range(n))
    random.Random(seed).shuffle(indices)
    return indices


def test_custom_keys(tmp_path):
    rows = [{"question": "1+1?", "target": 2, "qid": "a"}]
    path = _write_jsonl(tmp_path / "custom.jsonl", rows)
    (p,) = load_problems(str(path), problem_key="question", answer_key="target", id_key="qid")
    assert p == Problem("a", "1+1?", "2", {})


def test_missing_problem_key_names_the_fix(tmp_path):
    path = _write_jsonl(tmp_path / "gsm.jsonl", [{"question": "1+1?", "answer": "2"}])
    with pytest.raises(DataError) as err:
        load_problems(str(path))
    msg = str(err.value)
    assert "'problem'" in msg
    assert "['answer', 'question']" in msg
    assert "problem_key=question" in msg


def test_missing_answer_key_names_the_fix(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"problem": "1+1?", "solution": "2"}])
    with pytest.raises(DataError, match="answer_key=solution"):
        load_problems(str(path))


def test_openmathreasoning_and_math500_aliases(tmp_path):
    rows = [
        {"problem": "p", "expected_answer": "3", "generated_solution": "..."},
        {"problem": "q", "expected_answer": 4, "generated_solution": "..."},
    ]
    omr = load_problems(str(_write_jsonl(tmp_path / "omr.jsonl", rows)))
    assert [(p.id, p.answer) for p in omr] == [("0", "3"), ("1", "4")]
    assert omr[0].extra == {"generated_solution": "..."}

    rows = [{"problem": "p", "answer": "\\frac{1}{2}", "unique_id": "test/algebra/1.json", "solution": "s"}]
    (p,) = load_problems(str(_write_jsonl(tmp_path / "m500.jsonl", rows)))
    assert (p.id, p.answer, p.extra) == ("test/algebra/1.json", "\\frac{1}{2}", {"solution": "s"})


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "probs.csv"
    path.write_text("problem,answer\n1+1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match="Unsupported"):
        load_problems(str(path))


def test_hub_unreachable_message():
    """Run in a fresh interpreter: the hub libraries read the offline switches at import time."""
    code = (
        "from deep_math.data import load_problems\n"
        "try:\n"
        "    load_problems('no-such-org/no-such-dataset')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    ).stdout
    assert out.startswith("DataError Could not load dataset 'no-such-org/no-such-dataset'")
    assert "hf_tag=/path/to/file.jsonl" in out
    assert "bundled sample (hf_tag unset)" in out


# --- dev split ----------------------------------------------------------------------------------


def test_split_dev_is_deterministic_and_partitions():
    problems = [Problem(str(i), f"p{i}", str(i)) for i in range(40)]
    train, dev = split_dev(problems, dev_size=10, seed=3)
    assert (len(train), len(dev)) == (30, 10)
    assert split_dev(problems, 10, 3) == (train, dev)
    assert split_dev(problems, 10, 4)[1] != dev
    assert sorted([p.id for p in train + dev], key=int) == [p.id for p in problems]
    assert [int(p.id) for p in dev] == sorted(int(p.id) for p in dev)  # input order kept
    assert split_dev(problems, 0, 3) == (problems, [])
    with pytest.raises(DataError, match="dev_size"):
        split_dev(problems, 40, 3)


# --- shared benchmark data ----------------------------------------------------------------------


@pytest.mark.skipif(not MATH500.is_file(), reason=f"{MATH500} not present")
def test_load_shared_math500():
    problems = load_problems(str(MATH500), limit=10)
    assert len(problems) == 10
    assert problems[0].id.startswith("test/")
    assert all(p.problem and p.answer for p in problems)
    assert "solution" in problems[0].extra
