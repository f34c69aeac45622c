"""Micro-batching: many caller threads, one worker thread that runs batches.

Used by engines whose backend is not thread-safe or gains from batching (transformers
`generate`; bench/vllm_engine.py's baseline over vLLM's offline `LLM`; the vLLM engine itself runs
on AsyncLLM and needs none). Callers block on futures; the worker waits up to `wait_s`
after the first queued request for more, takes at most `max_batch_size`, calls
`run_batch(requests)` once and resolves the futures in order.

Joining: a `run_batch` that accepts a second argument (`joinable=True`) gets a `join(limit,
accept)` callback. Called between decoding chunks, it takes up to `limit` queued requests that
`accept(request)` admits into the running batch (their results are returned after the batch's
own, in join order); the others stay queued, in order, for the next batch (and `has_queued`
stays False until something new arrives, so a batch is not interrupted for them again). Without
it a request that arrives during a long batch waits for the whole batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from deep_math.engines.base import EngineError, GenRequest, GenResult

log = logging.getLogger(__name__)

_SHUTDOWN = object()


@dataclass
class _Pending:
    request: GenRequest
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """Counters for tests and throughput reports (updated by the worker thread only)."""

    batches: int = 0
    requests: int = 0
    generated_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    busy_seconds: float = 0.0


class MicroBatcher:
    """run_batch: `(requests) -> results` (same length, same order), or with `joinable=True`
    `(requests, join) -> results` for the requests plus those it joined (see the module
    docstring); any exception it raises fails every request of that batch with EngineError (the
    original as `__cause__`). reject: optional `(request) -> error message | None`, checked
    before batching (and before joining), so one bad request fails alone instead of failing its
    whole batch."""

    def __init__(
        self,
        run_batch: Callable[..., list[GenResult]],
        max_batch_size: int = 32,
        wait_s: float = 0.005,
        name: str = "engine",
        reject: Callable[[GenRequest], str | None] | None = None,
        joinable: bool = False,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.name = name
        self.reject = reject
        self.joinable = joinable
        self.stats = BatchStats()
        self._queue: queue.Queue[Any] = queue.Queue()  # _Pending or _SHUTDOWN
        # Taken off the queue by a join that did not admit them: served first (worker-only).
        self._held: deque[Any] = deque()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=f"{name}-batcher", daemon=True)
        self._worker.start()

    def submit(self, requests: list[GenRequest]) -> list[GenResult]:
        """Blocks until every request is done. Raises EngineError if any of them failed."""
        if self._closed:
            raise EngineError(f"{self.name} engine is closed")
        pending = [_Pending(r) for r in requests]
        for p in pending:
            self._queue.put(p)
        return [p.future.result() for p in pending]

    def has_queued(self) -> bool:
        """True if requests arrived that no batch or join has looked at yet."""
        return not self._queue.empty()

    def close(self) -> None:
        """Finish the batch in flight, stop the worker; queued requests fail. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_SHUTDOWN)
        self._worker.join()
        while True:
            try:
                item = self._held.popleft() if self._held else self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Pending):
                item.future.set_exception(EngineError(f"{self.name} engine was closed"))

    def _get(self, timeout: float | None) -> Any:
        """Next item, held-back ones first. timeout None: block; <= 0: raise queue.Empty now."""
        if self._held:
            return self._held.popleft()
        if timeout is None:
            return self._queue.get()
        return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()

    def _loop(self) -> None:
        while True:
            first = self._get(None)
            if first is _SHUTDOWN:
                return
            batch, shutdown = self._collect(first)
            self._run(batch)
            if shutdown:
                return

    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._get(remaining)
            except queue.Empty:
                break
            if item is _SHUTDOWN:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, batch: list[_Pending]) -> None:
        runnable = []
        for p in batch:
            problem = self.reject(p.request) if self.reject else None
            if problem:
                p.future.set_exception(EngineError(problem))
            else:
                runnable.append(p)
        if not runnable:
            return
        start = time.perf_counter()
        requests = [p.request for p in runnable]
        try:
            if self.joinable:
                results = self.run_batch(requests, lambda limit, accept: self._join(runnable, limit, accept))
            else:
                results = self.run_batch(requests)
            if len(results) != len(runnable):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(runnable)} requests")
        except Exception as exc:  # fail exactly this batch's requests; the worker keeps serving
            log.exception("%s engine: a batch of %d requests failed", self.name, len(runnable))
            for p in runnable:
                error = EngineError(f"{self.name} generate failed: {exc!r}")
                error.__cause__ = exc
                p.future.set_exception(error)
            return
        finally:
            self.stats.busy_seconds += time.perf_counter() - start
        for p, result in zip(runnable, results, strict=True):
            p.future.set_result(result)
        self.stats.batches += 1
        self.stats.requests += len(results)
        self.stats.generated_tokens += sum(len(r.token_ids) for r in results)
        self.stats.batch_sizes.append(len(results))

    def _join(
        self, runnable: list[_Pending], limit: int, accept: Callable[[GenRequest], bool]
    ) -> list[GenRequest]:
        """Move up to `limit` queued requests that `accept` admits into the running batch."""
        taken: list[GenRequest] = []
        skipped: list[Any] = []
        while len(taken) < limit:
            try:
                item = self._get(0)
            except queue.Empty:
                break
            if item is _SHUTDOWN:
                skipped.append(item)
                break
            problem = self.reject(item.request) if self.reject else None
            if problem:
                item.future.set_exception(EngineError(problem))
            elif accept(item.request):
                runnable.append(item)
                taken.append(item.request)
            else:
                skipped.append(item)
        self._held.extendleft(reversed(skipped))
        return taken
