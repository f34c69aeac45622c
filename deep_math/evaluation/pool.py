"""A process pool for grading with a hard per-item timeout.

Why not `concurrent.futures`: math-verify's own timeouts use `signal.alarm`, which cannot
interrupt work stuck inside C code (a huge integer power in sympy), and a stuck future cannot be
cancelled. Here each worker is a process that receives a batch of items and answers with one
message per batch (amortizing IPC); before each item it publishes (position, start time) in shared
memory, so the parent knows which item a worker is on. When that item exceeds its deadline the
worker is killed, the item is recorded as failed (`status="timeout"`), a fresh worker replaces it
and the other items of the batch are re-queued. A worker that dies (segfault,
OOM kill) is handled the same way with `status="error"`. The run never hangs on one item.

Workers are forked from this process (Linux default) so they start warm with math-verify imported.
`workers=0` runs everything serially in this process (timeouts: math-verify's own only).
"""

from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from deep_math.evaluation.grading import DEFAULT_TIMEOUT, ERROR, TIMEOUT, Grade, grade_answer, grade_text

log = logging.getLogger(__name__)

Failure = Callable[[Any, str, str], Any]


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _grade_failure(item: Any, status: str, detail: str) -> Grade:
    return Grade(None, False, status, detail)


def _worker_main(conn: Connection, state: Any) -> None:
    """Grade batches; before each item publish (position in batch, start time) in `state`, shared
    memory the parent reads to find the item that is over its deadline. One reply per batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        func, inner_timeout, items = msg
        out = []
        for i, item in enumerate(items):
            state[0], state[1] = i, time.monotonic()
            try:
                out.append(("ok", func(item, timeout=inner_timeout)))
            except Exception as exc:  # noqa: BLE001 - reported to the parent as this item's failure
                out.append(("error", f"{type(exc).__name__}: {exc}"))
        conn.send(out)


@dataclass
class _Worker:
    proc: Any
    conn: Connection
    state: Any  # shared [position in batch, start time of that item (time.monotonic)]
    indices: list[int] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(self.indices)

    def current(self) -> tuple[int, float]:
        pos, started = self.state[0], self.state[1]
        return min(int(pos), len(self.indices) - 1), started


class GradingPool:
    """`with GradingPool(workers=2, timeout=5) as pool: results = pool.map(func, items)`.

    `func(item, timeout=...)` must be a module-level function (it is pickled by name). `timeout`
    is the hard per-item wall-clock limit in seconds; math-verify's inner timeouts get half of it
    so most slow items fail gracefully before the kill."""

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = 5.0,
        batch_size: int = 32,
        start_method: str | None = None,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.timeout = float(timeout)
        self.batch_size = max(1, int(batch_size))
        methods = mp.get_all_start_methods()
        self._ctx = mp.get_context(start_method or ("fork" if "fork" in methods else "spawn"))
        self._pool: list[_Worker] = []
        self.restarts = 0

    @property
    def inner_timeout(self) -> float:
        return max(1.0, self.timeout / 2)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> GradingPool:
        return self

    def _start(self) -> None:
        """Start the workers (on the first map with items, so an unused pool costs nothing)."""
        if self._pool:
            return
        import math_verify  # noqa: F401 - imported before forking so workers start warm

        self._pool = [self._spawn() for _ in range(self.workers)]

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        state = self._ctx.RawArray("d", 2)
        proc = self._ctx.Process(target=_worker_main, args=(child, state), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent, state)

    def _kill(self, w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(timeout=5)
        w.conn.close()

    def close(self) -> None:
        for w in self._pool:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in self._pool:
            w.proc.join(timeout=2)
            self._kill(w)
        self._pool = []

    # -- mapping ---------------------------------------------------------------------------
    def map(
        self,
        func: Callable[..., Any],
        items: Sequence[Any],
        progress: bool = False,
        desc: str = "",
        on_failure: Failure | None = None,
        weight: Callable[[Any], float] | None = None,
    ) -> list[Any]:
        """Results of `func(item)` in input order. A failed item (timeout, crash, exception) gets
        `on_failure(item, status, detail)` (default: a wrong `Grade` with that status).
        `weight(item)` scales that item's deadline (e.g. a group of n answers to compare)."""
        on_failure = on_failure or _grade_failure
        bar = _progress(len(items), desc, progress)
        try:
            if not self.workers:
                return self._map_serial(func, items, on_failure, bar)
            if not items:
                return []
            self._start()
            return self._map_pool(func, items, on_failure, weight, bar)
        finally:
            if bar is not None:
                bar.close()

    def _map_serial(self, func, items, on_failure, bar) -> list[Any]:
        results = []
        for item in items:
            try:
                results.append(func(item, timeout=self.timeout))
            except Exception as exc:  # noqa: BLE001 - as in the pool: this item fails, the run goes on
                results.append(on_failure(item, ERROR, f"{type(exc).__name__}: {exc}"))
            if bar is not None:
                bar.update(1)
        return results

    def _map_pool(self, func, items, on_failure, weight, bar) -> list[Any]:
        n = len(items)
        results: list[Any] = [None] * n
        chunk = max(1, min(self.batch_size, n // (self.workers * 4) or 1))
        queue = collections.deque(list(range(s, min(s + chunk, n))) for s in range(0, n, chunk))
        done = 0

        def limit(idx: int) -> float:
            return self.timeout * max(1.0, weight(items[idx]) if weight else 1.0)

        def assign(w: _Worker) -> None:
            w.indices = queue.popleft() if queue else []
            if w.indices:
                w.state[0], w.state[1] = 0, time.monotonic()
                w.conn.send((func, self.inner_timeout, [items[i] for i in w.indices]))

        def finish(idx: int, value: Any) -> None:
            nonlocal done
            results[idx] = value
            done += 1
            if bar is not None:
                bar.update(1)

        def fail(w: _Worker, status: str, detail: str) -> _Worker:
            """The worker's current item failed: record it, re-queue the rest of its batch (the
            results of items before it were not sent yet), replace the worker."""
            pos, _ = w.current()
            idx = w.indices[pos]
            log.warning("grading item %d: %s (%s); worker replaced", idx, status, detail)
            finish(idx, on_failure(items[idx], status, detail))
            rest = w.indices[:pos] + w.indices[pos + 1 :]
            if rest:
                queue.appendleft(rest)
            self._kill(w)
            self.restarts += 1
            fresh = self._spawn()
            self._pool[self._pool.index(w)] = fresh
            return fresh

        for w in self._pool:
            assign(w)
        while done < n:
            busy = [w for w in self._pool if w.busy]
            if not busy:  # a failure re-queued work while the other workers were idle
                for w in self._pool:
                    assign(w)
                continue
            now = time.monotonic()
            deadlines = []
            for w in busy:
                pos, started = w.current()
                deadlines.append(started + limit(w.indices[pos]))
            ready = set(wait([w.conn for w in busy], timeout=max(0.01, min(deadlines) - now)))
            for w, deadline in zip(busy, deadlines, strict=True):
                if w.conn in ready or w.conn.poll():
                    try:
                        batch = w.conn.recv()
                    except (EOFError, OSError):
                        assign(fail(w, ERROR, f"worker died (exit code {w.proc.exitcode})"))
                        continue
                    for idx, (kind, value) in zip(w.indices, batch, strict=True):
                        finish(idx, value if kind == "ok" else on_failure(items[idx], ERROR, value))
                    assign(w)
                elif time.monotonic() > deadline:
                    pos, started = w.current()
                    if started + limit(w.indices[pos]) > time.monotonic():
                        continue  # it moved on to the next item meanwhile
                    detail = f"no result within {limit(w.indices[pos]):g} s; worker killed"
                    assign(fail(w, TIMEOUT, detail))
        return results


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", mininterval=0.5, dynamic_ncols=True)


def grade_many(
    pairs: Sequence[tuple[str | None, str]],
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    batch_size: int = 32,
    extract: bool = False,
    progress: bool = False,
) -> list[Grade]:
    """Grade many `(prediction, gold)` pairs (`(trace text, gold)` with `extract=True`) in a process
    pool. `timeout` is a hard per-item limit: the worker is killed, the item scored wrong with
    status `timeout`, and the rest goes on. workers=0 grades serially in this process."""
    func = grade_text if extract else _grade_pair
    with GradingPool(workers=workers, timeout=timeout, batch_size=batch_size) as pool:
        return pool.map(func, list(pairs), progress=progress, desc="grading")


def _grade_pair(item: tuple[str | None, str], timeout: float | None = DEFAULT_TIMEOUT) -> Grade:
    return grade_answer(item[0], item[1], timeout)
