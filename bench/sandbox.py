"""Sandbox benchmark: latency, overhead on CPU-heavy code, concurrency, kill latency, parent memory.

    python bench/sandbox.py            # ~1-2 minutes
    python bench/sandbox.py --quick    # ~20-30 seconds, fewer repetitions

Compares, in one run: our warm session vs bare `exec` in this process vs smolagents'
LocalPythonExecutor vs a fresh `python -c` per snippet. Targets: trivial snippet median <= 2 ms,
CPU-heavy snippet <= 1.15x bare exec, timeout kill within timeout + 0.5 s, flat parent RSS.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deep_math.sandbox import Sandbox

TRIVIAL = "x = 1 + 1"
HEAVY = "s = 0\nfor i in range({n}):\n    s += i * i % 7\ns"


def timings(fn: Callable[[], object], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def p95(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(0.95 * len(xs)))]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def local_executor():
    from smolagents.local_python_executor import LocalPythonExecutor

    executor = LocalPythonExecutor(additional_authorized_imports=["math"])
    executor.send_tools({})
    return executor


def bare_exec() -> Callable[[str], None]:
    glb: dict = {}
    return lambda code: exec(compile(code, "<bench>", "exec"), glb)  # noqa: S102 - the unsandboxed baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (~20-30 s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    q = args.quick
    n_trivial, n_fresh, n_heavy, n_conc = (300, 5, 3, 20) if q else (2000, 20, 7, 100)
    heavy_n, local_heavy_n, n_rss = 2_000_000, 30_000, (2000 if q else 10_000)

    t0 = time.perf_counter()
    sandbox = Sandbox(timeout=20.0, memory_mb=2048, max_output_chars=2000)
    start_s = time.perf_counter() - t0
    print(f"sandbox start (zygote warm-up): {start_s:.2f} s; layers: {sandbox.layers}")
    create = timings(lambda: sandbox.session().close(), 10 if q else 30)
    session = sandbox.session()
    local = local_executor()
    bare = bare_exec()

    rows = []
    lat = {
        "sandbox session": timings(lambda: session.run(TRIVIAL), n_trivial),
        "bare exec (in-process)": timings(lambda: bare(TRIVIAL), n_trivial),
        "smolagents LocalPythonExecutor": timings(lambda: local(TRIVIAL), n_trivial),
        "fresh `python -c`": timings(lambda: subprocess.run([sys.executable, "-c", TRIVIAL], check=True), n_fresh, 1),
        "fresh `python -c` + numpy/sympy": timings(
            lambda: subprocess.run([sys.executable, "-c", "import numpy, sympy; " + TRIVIAL], check=True),
            max(2, n_fresh // 5),
            0,
        ),
    }  # fmt: skip
    for name, xs in lat.items():
        rows.append((name, statistics.median(xs) * 1e3, p95(xs) * 1e3, len(xs)))

    # Interleaved and min-of-n: this machine's cores are shared, so single runs are noisy.
    heavy = HEAVY.format(n=heavy_n)
    ours_runs, bare_runs = [], []
    for _ in range(n_heavy):
        ours_runs += timings(lambda: session.run(heavy), 1, 0)
        bare_runs += timings(lambda: bare(heavy), 1, 0)
    ours_heavy, bare_heavy = min(ours_runs), min(bare_runs)
    small = HEAVY.format(n=local_heavy_n)
    local_small = min(timings(lambda: local(small), 2, 0))
    bare_small = min(timings(lambda: bare(small), 5, 1))

    # 32 concurrent traces, one thread each, each with its own session.
    sessions = [sandbox.session() for _ in range(32)]
    done = []

    def worker(s):
        for _ in range(n_conc):
            s.run(TRIVIAL)
        done.append(n_conc)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(s,)) for s in sessions]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    conc_rate = sum(done) / (time.perf_counter() - t)
    for s in sessions:
        s.close()

    kill_timeout = 1.0
    kills, rebuilds = [], []
    victim = sandbox.session()
    victim.run("import sympy as sp\nx = sp.Symbol('x')")  # a small history to replay
    for _ in range(2 if q else 5):
        r = victim.run("while True:\n    pass", timeout=kill_timeout)
        assert r.timed_out
        kills.append(r.duration_s - kill_timeout)
        t = time.perf_counter()
        r = victim.run(TRIVIAL)
        rebuilds.append(time.perf_counter() - t)
        assert r.rebuilt
    victim.close()

    rss_before = rss_mb()
    for _ in range(n_rss):
        session.run("y = [i for i in range(50)]\nprint(sum(y))")
    rss_after = rss_mb()
    session.close()
    sandbox.close()

    print(f"\n{'trivial snippet `' + TRIVIAL + '`':40s} {'median ms':>10s} {'p95 ms':>10s} {'n':>6s}")
    for name, med, p, n in rows:
        print(f"{name:40s} {med:10.3f} {p:10.3f} {n:6d}")
    print(f"{'session create (fork + confine)':40s} {statistics.median(create) * 1e3:10.3f} {p95(create) * 1e3:10.3f}"
          f" {len(create):6d}")  # fmt: skip
    print("\nCPU-heavy pure-Python snippet (loop of i*i % 7)")
    print(f"  ours {ours_heavy:.3f} s vs bare exec {bare_heavy:.3f} s  ({heavy_n:,} iterations)"
          f"  -> ratio ours/bare = {ours_heavy / bare_heavy:.3f}  (target <= 1.15)")  # fmt: skip
    print(f"  LocalPythonExecutor {local_small:.3f} s vs bare exec {bare_small:.4f} s  ({local_heavy_n:,} iterations)"
          f"  -> ratio = {local_small / bare_small:.0f}x")  # fmt: skip
    print(f"\n32 concurrent sessions (threads): {conc_rate:,.0f} snippets/s  ({sum(done)} snippets)")
    print(f"timeout kill latency (result time - timeout): median {statistics.median(kills) * 1e3:.1f} ms,"
          f" max {max(kills) * 1e3:.1f} ms (target < 500 ms); next-run rebuild {statistics.median(rebuilds) * 1e3:.1f} ms")  # fmt: skip
    print(f"parent RSS: {rss_before:.1f} MiB before, {rss_after:.1f} MiB after {n_rss:,} snippets"
          f" ({rss_after - rss_before:+.1f} MiB)")  # fmt: skip
    triv = statistics.median(lat["sandbox session"]) * 1e3
    print(f"\nsummary: trivial median {triv:.3f} ms (target <= 2 ms); heavy ratio {ours_heavy / bare_heavy:.3f}"
          f" (target <= 1.15); total bench time {time.perf_counter() - t0:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
