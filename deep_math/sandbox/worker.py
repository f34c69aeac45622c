"""The worker: one forked process per session, holding that session's globals.

Runs in a child of the zygote. `serve()` confines the process (oslimits.confine), says hello with
the layers it got, then executes snippets received over its socket until EOF. Each snippet:

- is parsed and checked by the policy, compiled as `<cell N>` (so tracebacks show only the
  snippet's own frames, with source lines) and executed with `exec` in the session globals:
  real CPython at full speed;
- has stdout/stderr captured into a bounded buffer (head and tail kept, the middle counted), so a
  huge print costs neither worker memory nor pipe bandwidth;
- ends with the repr of a final bare expression, as in a notebook.

The first request after the worker starts carries the session's seed (`seed_streams`).

A failure of this harness itself (the checker or compiler breaking, capture or error formatting
raising) is not the snippet's: it is replied as a sandbox error (`sandbox_error` set, an error
text saying so) and the worker keeps serving.

The parent's watchdog owns the timeout: this process never decides to stop itself.
"""

from __future__ import annotations

import ast
import linecache
import os
import socket
import sys
import time
import traceback
from typing import Any

from deep_math.sandbox import oslimits, policy
from deep_math.sandbox.protocol import ProtocolError, recv_msg, send_msg

MAX_SNIPPET_BYTES = 4 << 20


class BoundedWriter:
    """A text stream keeping the first and last characters of what is written, up to `limit`."""

    encoding = "utf-8"  # sympy's pprint and others read it to choose unicode output
    errors = "strict"

    def __init__(self, limit: int):
        self.limit = max(limit, 0)
        self.head_limit = self.limit - self.limit // 4
        self.tail_limit = self.limit - self.head_limit
        self.head: list[str] = []
        self.head_len = 0
        self.tail = ""
        self.total = 0

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        n = len(s)
        self.total += n
        room = self.head_limit - self.head_len
        if room > 0:
            self.head.append(s[:room])
            self.head_len += min(room, n)
            s = s[room:]
        if s and self.tail_limit:
            self.tail = (self.tail + s[-self.tail_limit :])[-self.tail_limit :]
        return n

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def getvalue(self) -> str:
        head = "".join(self.head)
        if self.total <= self.limit:
            return head + self.tail
        dropped = self.total - len(head) - len(self.tail)
        return f"{head}\n... [output truncated: {dropped} characters omitted] ...\n{self.tail}"


def format_error(exc: BaseException, limit: int) -> str:
    """A short traceback with only the snippet's frames (`<cell N>` / `<string>`)."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    te.__cause__ = te.__context__ = None  # the snippet's own error is what the model can fix
    frames = [f for f in te.stack if f.filename.startswith(("<cell", "<string>"))]
    if isinstance(exc, SyntaxError) or not frames:  # refused before running: no frames to show
        text = "".join(te.format_exception_only())
    else:
        te.stack = traceback.StackSummary.from_list(frames)
        text = "".join(te.format())
    if len(text) > limit:
        text = text[: limit // 2] + "\n... [traceback truncated] ...\n" + text[-limit // 2 :]
    return text


class WorkerSession:
    """The state of one session inside the worker."""

    def __init__(self, max_output_chars: int):
        self.globals = policy.new_session_globals()
        self.max_output_chars = max_output_chars
        self.cells = 0

    def _compile(self, source: str) -> tuple[Any, Any]:
        self.cells += 1
        filename = f"<cell {self.cells}>"
        tree = policy.check_source(source, filename)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        body = compile(tree, filename, "exec")
        return body, (compile(last, filename, "eval") if last is not None else None)

    def run(self, source: str) -> dict[str, Any]:
        """Run one snippet. Reply: output, error (the text for the model) and sandbox_error (set,
        with the internal detail, when the sandbox's own code failed rather than the snippet)."""
        out = BoundedWriter(self.max_output_chars)
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = out
        error = internal = None
        try:
            try:
                body, last = self._compile(source)
            except SNIPPET_COMPILE_ERRORS:
                raise
            except Exception as exc:  # the checker/compiler broke, not the snippet
                internal = exc
                raise
            exec(body, self.globals)  # noqa: S102 - the sandboxed worker: running snippets is its job
            if last is not None:
                value = eval(last, self.globals)  # noqa: S307 - as above
                if value is not None:
                    out.write(repr(value))
        except BaseException as exc:  # noqa: B036, BLE001 - SystemExit/KeyboardInterrupt from a snippet are errors too
            if internal is None:
                error = format_error(exc, self.max_output_chars)
        finally:
            sys.stdout, sys.stderr = saved
        if internal is not None:
            return sandbox_error_reply(internal, out.getvalue())
        return {"output": out.getvalue(), "error": error}


# What checking and compiling a snippet may legitimately raise: the snippet's own mistakes
# (SyntaxError includes IndentationError; ValueError: null bytes; RecursionError/MemoryError: a
# pathologically nested expression). Anything else from that phase is the sandbox's failure.
SNIPPET_COMPILE_ERRORS = (SyntaxError, ValueError, policy.SandboxPolicyError, RecursionError, MemoryError)


def sandbox_error_reply(exc: BaseException, output: str = "") -> dict[str, Any]:
    """The reply for a failure of the sandbox's own code while it ran a snippet."""
    detail = f"{type(exc).__name__}: {exc}"[:500]
    return {
        "output": output,
        "error": f"SandboxError: the sandbox failed internally while running this snippet ({detail}); "
        "this is not an error in the code, running it again may work.",
        "sandbox_error": detail,
    }


def seed_streams(seed: int) -> None:
    """Seed the global random streams a snippet draws from without seeding them itself: Python's
    `random` (which reseeds itself at fork) and numpy's legacy global state (which a fork copies
    from the zygote, so every session would draw the same numbers)."""
    import random

    import numpy

    random.seed(seed)
    numpy.random.seed(seed % 2**32)


def _detach(sock_fd: int) -> None:
    """Own session, stdio on /dev/null, every inherited descriptor but the session socket closed."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.closerange(3, sock_fd)
    os.closerange(sock_fd + 1, 1 << 16)
    # Reading the environment of the parent must give nothing: clear ours (inherited from zygote).
    os.environ.clear()


def serve(sock_fd: int, zygote_pid: int, config: dict[str, Any]) -> None:
    """Worker main loop (in the forked child). Never returns: exits on EOF or error."""
    try:
        oslimits.set_parent_death_signal()
        if os.getppid() != zygote_pid:  # the zygote died before we could watch it
            os._exit(1)
        _detach(sock_fd)
        sock = socket.socket(fileno=sock_fd)
        sys.stdout = sys.stderr = BoundedWriter(0)
        sys.dont_write_bytecode = True
        started = time.perf_counter()
        layers = oslimits.confine(config["memory_mb"], config["cpu_seconds"])
        session = WorkerSession(config["max_output_chars"])
        send_msg(sock, {"hello": layers.to_json(), "setup_s": time.perf_counter() - started})
        while True:
            request = recv_msg(sock, MAX_SNIPPET_BYTES)
            try:
                if request.get("seed") is not None:
                    seed_streams(int(request["seed"]))
                reply = session.run(request["code"])
            except Exception as exc:  # noqa: BLE001 - a bug in the harness: report it, keep serving
                reply = sandbox_error_reply(exc)
            send_msg(sock, reply)
    except (ProtocolError, OSError):
        pass  # the parent closed the session or went away
    finally:
        os._exit(0)
