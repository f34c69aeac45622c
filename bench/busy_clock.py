"""Shared by the benches: the wall time during which at least one timed call was in flight."""

from __future__ import annotations

import threading
import time


class BusyClock:
    """Union of the intervals between enter() and exit(), across threads; `entries` counts enter()."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.since = 0.0
        self.busy = 0.0
        self.entries = 0

    def enter(self):
        with self.lock:
            if self.active == 0:
                self.since = time.perf_counter()
            self.active += 1
            self.entries += 1

    def exit(self):
        with self.lock:
            self.active -= 1
            if self.active == 0:
                self.busy += time.perf_counter() - self.since
