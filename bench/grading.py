"""Grading throughput: the process pool against serial grading, side by side.

Data: the MATH-500 reference solutions (`solution` text graded against `answer`) x 16 copies =
8,000 samples, as in a maj@16 run. Two workloads:
- "grader": what evaluation runs (extraction; identical normalized strings skip math-verify);
- "math-verify every item": the string shortcut off, so every sample is parsed and verified, the
  cost of real model outputs whose answers are written differently from the gold.

    python bench/grading.py [--copies 16] [--workers 2] [--batch-size 32] [--data PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from deep_math.evaluation import grading
from deep_math.evaluation.extract import extract_answer
from deep_math.evaluation.pool import GradingPool, default_workers


def grade_every_item(item, timeout=None):
    """grading.grade_text with the string shortcut off (math-verify on every sample)."""
    text, gold = item
    answer = extract_answer(text)
    if answer is None:
        return grading.Grade(None, False, grading.NO_ANSWER)
    return grading.Grade(answer, grading.compare(answer, gold, timeout, shortcut=False))


def data_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("DEEP_MATH_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data"
    return root / "math500.jsonl"


def timed(func, items, workers: int, batch_size: int, prescreen: bool) -> tuple[float, int]:
    """Seconds to grade `items` and how many were correct. `prescreen`: as evaluation does, items
    that need no math-verify call (`grading.quick_grade`) are settled here, the rest go to the pool."""
    grading._parse_gold.cache_clear()  # workers fork from here: start every run with a cold cache
    start = time.perf_counter()
    quick = [grading.quick_grade(*item) if prescreen else None for item in items]
    rest = [item for item, q in zip(items, quick, strict=True) if q is None]
    with GradingPool(workers=workers, timeout=10, batch_size=batch_size) as pool:
        results = pool.map(func, rest) + [q for q in quick if q is not None]
    return time.perf_counter() - start, sum(r.correct for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    path = data_path(args.data)
    if not path.is_file():
        sys.exit(f"MATH-500 not found at {path} (pass --data or set DEEP_MATH_SHARED_DATA)")
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    items = [(r["solution"], r["answer"]) for r in rows] * args.copies
    grading.grade_text(items[0])  # warm imports (latex parser) so neither side pays them

    print(
        f"{len(items)} samples ({len(rows)} MATH-500 reference solutions x {args.copies}), "
        f"pool: {args.workers} workers, batch {args.batch_size}, CPUs: {default_workers()}"
    )
    print(
        f"{'workload':<24} {'serial s':>9} {'serial/s':>9} {'pool s':>8} {'pool/s':>8} {'speedup':>8} {'correct':>13}"
    )
    workloads = (("grader", grading.grade_text, True), ("math-verify every item", grade_every_item, False))
    for name, func, prescreen in workloads:
        t_serial, ok_serial = timed(func, items, 0, args.batch_size, prescreen)
        t_pool, ok_pool = timed(func, items, args.workers, args.batch_size, prescreen)
        n = len(items)
        print(
            f"{name:<24} {t_serial:>9.2f} {n / t_serial:>9.0f} {t_pool:>8.2f} {n / t_pool:>8.0f} "
            f"{t_serial / t_pool:>7.2f}x {ok_pool:>6}/{ok_serial:<6}"
        )


if __name__ == "__main__":
    main()
