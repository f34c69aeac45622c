"""Parent side of the zygote: start it, ask it for workers, hold and kill workers.

The zygote is a fresh interpreter (subprocess, not a fork of the caller, which may hold torch and
threads) with a minimal environment: the caller's environment variables never reach model code.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from deep_math.sandbox.oslimits import PACKAGE_ROOT, Layers
from deep_math.sandbox.protocol import ProtocolError, recv_msg
from deep_math.sandbox.zygote import THREAD_ENV

logger = logging.getLogger(__name__)

_ZYGOTE_START_TIMEOUT_S = 120.0
_WORKER_HELLO_TIMEOUT_S = 30.0


def _minimal_env() -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(THREAD_ENV)
    return env


def zygote_sys_path() -> list[str]:
    """What the zygote puts before its default sys.path: this package's root, then the parent's
    PYTHONPATH folders (absolute). The zygote runs isolated (`-I` ignores PYTHONPATH), so packages
    installed with `pip install --target` on PYTHONPATH (pyseccomp, sympy) would vanish without this."""
    extra = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = [PACKAGE_ROOT]
    for p in extra:
        if os.path.isdir(p) and p not in paths:
            paths.append(p)
    return paths


def _wait_readable(fd: int, timeout_s: float) -> bool:
    # poll, not select: the caller's process may hold more than FD_SETSIZE (1024) descriptors.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout_s * 1000)))


class WorkerHandle:
    """One live worker: its socket, pid and pidfd. `kill()` is idempotent and thread-safe."""

    def __init__(self, sock: socket.socket, pid: int, pidfd: int, layers: Layers):
        self.sock, self.pid, self.layers = sock, pid, layers
        self._pidfd: int | None = pidfd
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        with self._lock:
            if self._pidfd is None:
                return False
            return not _wait_readable(self._pidfd, 0.0)

    def kill(self, wait_s: float = 2.0) -> None:
        """SIGKILL the worker (all its threads; no handler can catch it) and wait for its exit."""
        with self._lock:
            if self._pidfd is None:
                return
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_readable(self._pidfd, wait_s)  # a pidfd turns readable once the process is gone
            os.close(self._pidfd)
            self._pidfd = None
            self.sock.close()


@dataclass(frozen=True)
class WorkerConfig:
    memory_mb: int
    cpu_seconds: int
    max_output_chars: int


class SpawnError(RuntimeError):
    """One worker could not be started (the zygote refused or did not answer); other sessions and
    the zygote itself are unaffected."""


class Zygote:
    """Owns the zygote process. `spawn()` is thread-safe (one fork at a time).

    request_timeout_s: how long a spawn request waits for the zygote's answer; past it that spawn
    fails (SpawnError) and a late answer is discarded when it comes. A dead zygote (EOF on the
    control socket) is restarted once.
    """

    request_timeout_s = 30.0

    def __init__(self, config: WorkerConfig):
        self.config = config
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._ctrl: socket.socket | None = None
        self._next_id = 0
        self._start()

    def _bootstrap(self) -> str:
        """The Python code the zygote interpreter runs (a seam for tests)."""
        return f"import sys; sys.path[0:0] = {zygote_sys_path()!r}; from deep_math.sandbox.zygote import main; main()"

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cfg = json.dumps(self.config.__dict__)
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-c", self._bootstrap(), str(theirs.fileno()), cfg],
            env=_minimal_env(),
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd="/",
            close_fds=True,
        )
        theirs.close()
        ours.settimeout(_ZYGOTE_START_TIMEOUT_S)
        try:
            msg = ours.recv(1024)
        except TimeoutError:
            msg = b""
        if not msg:
            self._proc.kill()
            raise RuntimeError("sandbox zygote failed to start (see its stderr above)")
        ours.settimeout(None)
        self._ctrl = ours
        logger.debug("sandbox zygote started, pid %d", self._proc.pid)

    def spawn(self) -> WorkerHandle:
        """Fork a new worker and wait for its hello. Restarts a dead zygote once. Raises
        SpawnError when only this worker failed (refused or unanswered request, no hello)."""
        parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                with self._lock:
                    pid, pidfd = self._request_or_restart(worker_end)
            finally:
                worker_end.close()
        except BaseException:
            parent_end.close()  # a worker forked late for this request sees EOF and exits
            raise
        try:
            hello = recv_msg(parent_end, 1 << 16, time.monotonic() + _WORKER_HELLO_TIMEOUT_S)
            layers = Layers.from_json(hello["hello"])
        except (TimeoutError, ProtocolError, KeyError, TypeError) as exc:
            WorkerHandle(parent_end, pid, pidfd, Layers()).kill()
            raise SpawnError(f"sandbox worker failed to start: {exc!r}") from exc
        return WorkerHandle(parent_end, pid, pidfd, layers)

    def _request_or_restart(self, worker_end: socket.socket) -> tuple[int, int]:
        try:
            return self._request(worker_end)
        except SpawnError:
            raise
        except TimeoutError as exc:
            raise SpawnError(
                f"the sandbox zygote did not answer a spawn request within {self.request_timeout_s:g} s"
            ) from exc
        except OSError as exc:
            if self._ctrl is None:
                raise RuntimeError("the sandbox is closed") from exc
            logger.warning("sandbox zygote is gone (%s); restarting it", exc)
            self._stop()
            self._start()
            return self._request(worker_end)

    def _request(self, worker_end: socket.socket) -> tuple[int, int]:
        """One spawn request and its answer (replies to earlier, abandoned requests are dropped)."""
        if self._ctrl is None:
            raise OSError("no zygote")
        self._next_id += 1
        request_id = self._next_id
        deadline = time.monotonic() + self.request_timeout_s
        self._ctrl.settimeout(self.request_timeout_s)
        socket.send_fds(self._ctrl, [f"spawn {request_id}".encode()], [worker_end.fileno()])
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._ctrl.settimeout(remaining)
            msg, fds, _, _ = socket.recv_fds(self._ctrl, 1024, 1)
            if not msg:
                raise ConnectionError("zygote closed the control socket")
            try:
                reply = json.loads(msg)
            except ValueError as exc:
                raise ConnectionError(f"zygote sent a malformed reply: {msg[:64]!r}") from exc
            if reply.get("id") != request_id or "error" in reply:
                for fd in fds:  # the pidfd of a worker nobody waits for: it exits on EOF
                    os.close(fd)
                if reply.get("id") == request_id:
                    raise SpawnError(f"the sandbox zygote could not start a worker: {reply['error']}")
                continue
            if len(fds) != 1:  # no free descriptor here for the pidfd: this spawn fails, the zygote is fine
                for fd in fds:
                    os.close(fd)
                raise SpawnError(
                    "the sandbox could not receive the new worker's pidfd (out of file descriptors?)"
                )
            return int(reply["pid"]), fds[0]

    def _stop(self) -> None:
        if self._ctrl is not None:
            self._ctrl.close()  # EOF: the zygote kills its workers and exits
            self._ctrl = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._stop()
