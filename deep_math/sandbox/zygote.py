"""The zygote: a warm, single-threaded Python that forks one worker per session.

Started by the parent (see `spawner.py`) as a fresh interpreter with a minimal environment, so the
caller's threads, torch state and secrets are never inherited by workers. It imports numpy, sympy,
scipy and the allowed stdlib modules once (with numerical thread pools limited to one thread), then
serves fork requests on its control socket:

    parent -> zygote: b"spawn <id>" + one fd (the worker's end of a fresh socketpair)
    zygote -> parent: {"id": <id>, "pid": ...} + one fd (a pidfd of the new worker, for a
                      race-free kill), or {"id": <id or null>, "error": "..."} and no fd when the
                      request was malformed or the fork failed (only that request fails: live
                      workers are untouched)

The id lets the parent discard a late reply to a request it stopped waiting for.
The zygote never runs model code. On EOF of the control socket (the parent exited or crashed) it
kills every worker it forked and exits; workers also carry PR_SET_PDEATHSIG against the zygote.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import select
import signal
import socket
import sys

logger = logging.getLogger(__name__)

# Imported once here so that sessions start warm; submodules that snippets commonly touch.
PREIMPORTS = (
    "numpy", "numpy.linalg", "numpy.polynomial", "numpy.random", "numpy.fft",
    "scipy", "scipy.optimize", "scipy.integrate", "scipy.linalg", "scipy.special", "scipy.stats",
    "scipy.sparse", "scipy.interpolate", "scipy.signal", "scipy.fft",
    "sympy", "sympy.parsing.sympy_parser", "sympy.ntheory", "sympy.solvers", "sympy.abc",
    "mpmath", "math", "cmath", "fractions", "decimal", "numbers", "itertools", "functools",
    "operator", "collections", "collections.abc", "statistics", "random", "re", "string", "heapq",
    "bisect", "copy", "time", "datetime", "typing", "dataclasses", "enum", "json", "textwrap",
    "array", "pprint", "unicodedata", "calendar", "abc", "warnings",
)  # fmt: skip

THREAD_ENV = {
    name: "1"
    for name in (
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "BLIS_NUM_THREADS",
    )  # fmt: skip
}


def preimport() -> None:
    for name in PREIMPORTS:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - an optional module missing is not fatal
            logger.warning("zygote could not pre-import %s: %s", name, exc)
    # Warm sympy's lazily built parser tables so each session does not rebuild them.
    import sympy

    sympy.sympify("x**2 + 1")
    # The worker module and the seccomp binding must be loaded before confinement.
    import deep_math.sandbox.worker  # noqa: F401


def _spawn(
    ctrl: socket.socket, worker_fd: int, config: dict, children: dict[int, int], request_id: int
) -> None:
    """Fork one worker and send its pid and pidfd. Raises OSError when the fork or the pidfd fails
    (nothing is left behind: the worker fd is closed, a forked child is killed)."""
    zygote_pid = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        os.close(worker_fd)
        raise
    if pid == 0:  # the worker
        try:
            from deep_math.sandbox import worker

            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            worker.serve(worker_fd, zygote_pid, config)
        finally:
            os._exit(1)
    os.close(worker_fd)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        os.kill(pid, signal.SIGKILL)
        raise
    children[pid] = pidfd
    socket.send_fds(ctrl, [json.dumps({"id": request_id, "pid": pid}).encode()], [pidfd])


def _request_id(msg: bytes) -> int | None:
    """The id of a well-formed request b"spawn <id>", else None."""
    verb, _, rid = msg.partition(b" ")
    return int(rid) if verb == b"spawn" and rid.isdigit() else None


def _refuse(ctrl: socket.socket, request_id: int | None, error: str) -> None:
    logger.error("zygote: %s", error)
    ctrl.send(json.dumps({"id": request_id, "error": error}).encode())


def _reap_exited(children: dict[int, int]) -> None:
    """Forget workers that exited (a pidfd turns readable on exit). SIGCHLD is ignored: auto-reap."""
    if not children:
        return
    poller = select.poll()
    for fd in children.values():
        poller.register(fd, select.POLLIN)
    readable = {fd for fd, _ in poller.poll(0)}
    for pid, fd in list(children.items()):
        if fd in readable:
            os.close(fd)
            del children[pid]


def serve(ctrl_fd: int, config: dict) -> None:
    ctrl = socket.socket(fileno=ctrl_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the caller; EOF tells us to stop
    children: dict[int, int] = {}
    try:
        socket.send_fds(ctrl, [b'{"ready": true}'], [])
        while True:
            msg, fds, _, _ = socket.recv_fds(ctrl, 1024, 4)
            if not msg:
                break
            request_id = _request_id(msg)
            if request_id is None or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                _refuse(ctrl, request_id, f"malformed spawn request {msg[:64]!r} with {len(fds)} fds")
                continue
            _reap_exited(children)
            try:
                _spawn(ctrl, fds[0], config, children, request_id)
            except OSError as exc:  # a failed fork (no memory, no pids, no fds) fails this request only
                _refuse(ctrl, request_id, f"could not fork a worker: {exc}")
    except OSError as exc:
        logger.debug("zygote control socket closed: %s", exc)
    finally:
        for fd in children.values():
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    ctrl_fd, config = int(sys.argv[1]), json.loads(sys.argv[2])
    os.environ.update(THREAD_ENV)
    preimport()
    gc.collect()
    gc.freeze()  # keep the warm heap shared copy-on-write between forks
    serve(ctrl_fd, config)


if __name__ == "__main__":
    main()
