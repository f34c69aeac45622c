"""`Sandbox` (owns the zygote) and `Session` (one per trace; owns one worker at a time)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Literal

from deep_math.sandbox.oslimits import Layers
from deep_math.sandbox.protocol import ProtocolError, recv_msg, send_msg
from deep_math.sandbox.spawner import WorkerConfig, WorkerHandle, Zygote

logger = logging.getLogger(__name__)

_KILLED_NOTE = (
    "the next run restores the variables of earlier successful snippets by replaying them "
    "(it will say so if that fails)"
)

RunKind = Literal["ok", "error", "timeout", "sandbox_error"]


@dataclass(frozen=True)
class RunResult:
    """What one snippet produced.

    output: printed text (stdout and stderr, in order), then the repr of a final bare expression;
        truncated to max_output_chars with an "[output truncated ...]" marker.
    error: the text the model sees about the failure: a short traceback limited to the snippet's
        own frames, or a timeout/crash/sandbox notice; None when the snippet succeeded.
    timed_out: the snippet hit the wall-clock limit and its worker was killed.
    rebuilt: the session's worker had died (timeout/crash) and was rebuilt before this run by
        replaying the earlier successful snippets.
    replay_error: set when that replay itself failed (state may then differ from before).
    sandbox_error: set (to the internal detail, for logs) when the run failed for a reason the
        model cannot fix: the sandbox's own code raised, the worker died unexpectedly, or the
        rebuild's replay failed and the snippet then failed (it may have needed the lost state).
        Such a run is not the model's mistake (see `kind`).
    duration_s: wall-clock seconds of this run, rebuild excluded.
    """

    output: str = ""
    error: str | None = None
    timed_out: bool = False
    rebuilt: bool = False
    replay_error: str | None = None
    sandbox_error: str | None = None
    duration_s: float = 0.0

    @property
    def kind(self) -> RunKind:
        """ok; error (the snippet's own mistake); timeout; sandbox_error (see the field)."""
        if self.timed_out:
            return "timeout"
        if self.sandbox_error is not None:
            return "sandbox_error"
        return "ok" if self.error is None else "error"


class Session:
    """A persistent Python namespace for one trace. `run` is thread-safe (runs are serialized).

    Isolation: each session is its own worker process, so nothing one session does (monkeypatching
    `math.sqrt`, builtins, module state) is visible to any other session.

    seed: seeds Python's `random` and numpy's global random state before the session's first
    snippet, and again in every rebuilt worker before the replay, so a replay draws what the
    original runs drew. None: a random seed, kept for replays.
    """

    def __init__(self, sandbox: Sandbox, seed: int | None = None):
        self._sandbox = sandbox
        self._lock = threading.Lock()
        self._history: list[str] = []  # successful snippets, replayed after a kill
        self._closed = False
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        self._seeded = False  # whether the current worker got the seed yet
        self._worker: WorkerHandle | None = sandbox._spawn_checked()

    @property
    def pid(self) -> int | None:
        """The current worker's pid (for tests and monitoring)."""
        return self._worker.pid if self._worker else None

    def run(self, code: str, timeout: float | None = None) -> RunResult:
        """Run `code` in this session. timeout: hard wall-clock limit; the worker is killed at it."""
        timeout = self._sandbox.timeout if timeout is None else timeout
        with self._lock:
            if self._closed:
                raise RuntimeError("run() on a closed sandbox session")
            rebuilt, replay_error = False, None
            if self._worker is None or not self._worker.alive:
                rebuilt = True
                try:
                    replay_error = self._rebuild()
                except RuntimeError as exc:  # no worker could be started: this run fails, not the caller
                    self._kill()
                    logger.warning("sandbox session could not restart its worker: %s", exc)
                    return RunResult(
                        error="SandboxError: the sandbox could not start a Python process for this snippet; "
                        "this is not an error in the code, running it again may work.",
                        rebuilt=True,
                        sandbox_error=f"worker restart failed: {exc}",
                    )
            result = self._execute(code, timeout)
            if result.error is None and not result.timed_out:
                self._history.append(code)
            error, sandbox_error = result.error, result.sandbox_error
            if replay_error and error is not None:
                # The model must not believe its earlier variables survived (the kill notice said
                # they would be restored): say what was lost, whatever else went wrong.
                if not result.timed_out and sandbox_error is None:
                    sandbox_error = replay_error
                error = f"{error.rstrip()}\nSandboxError: the session was restarted and the {replay_error}."
            return RunResult(
                output=result.output,
                error=error,
                timed_out=result.timed_out,
                rebuilt=rebuilt,
                replay_error=replay_error,
                sandbox_error=sandbox_error,
                duration_s=result.duration_s,
            )

    def _execute(self, code: str, timeout: float) -> RunResult:
        worker = self._worker
        if worker is None:  # run() always starts one first; never trust that with an assert
            return RunResult(
                error="SandboxError: no Python process is running for this session; this is not an error "
                "in the code, running it again may work.",
                sandbox_error="no worker",
            )
        start = time.monotonic()
        deadline = start + timeout
        request = {"code": code}
        if not self._seeded:
            request["seed"], self._seeded = self.seed, True
        try:
            send_msg(worker.sock, request)
            reply = recv_msg(worker.sock, self._sandbox._max_reply_bytes, deadline)
            output, error, internal = str(reply["output"]), reply["error"], reply.get("sandbox_error")
            if internal is not None:
                logger.warning("sandbox worker %d failed internally: %s", worker.pid, internal)
            return RunResult(
                output=output,
                error=None if error is None else str(error),
                sandbox_error=None if internal is None else str(internal),
                duration_s=time.monotonic() - start,
            )
        except TimeoutError:
            self._kill()
            return RunResult(
                error=f"TimeoutError: the snippet ran longer than {timeout:g} s and was killed; {_KILLED_NOTE}.",
                timed_out=True,
                duration_s=time.monotonic() - start,
            )
        except (ProtocolError, OSError, KeyError, TypeError, AttributeError) as exc:
            self._kill()
            logger.info("sandbox worker %d died or misbehaved: %s", worker.pid, exc)
            return RunResult(
                error="WorkerCrashed: the Python process running the snippet died (a crash in native "
                f"code or an exceeded memory/CPU limit); {_KILLED_NOTE}.",
                sandbox_error=f"worker died or sent a malformed reply: {exc}",
                duration_s=time.monotonic() - start,
            )

    def _kill(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
        self._seeded = False

    def _rebuild(self) -> str | None:
        """Fresh worker + replay of the successful history. Returns a replay error, if any (what
        the model is told was lost). Raises RuntimeError when no worker can be started."""
        self._kill()
        self._worker = self._sandbox._spawn_checked()
        failed = self._replay()
        if failed is None:
            return None
        i, what = failed
        # Keep what replayed; drop the rest so later rebuilds do not repeat the failure.
        del self._history[i:]
        lost = f"replay of earlier snippet {i + 1} {what}; its effects and later ones are lost"
        if self._worker is not None and self._worker.alive:
            return lost
        # The failed replay took the worker with it: start again with the good prefix.
        self._kill()
        self._worker = self._sandbox._spawn_checked()
        if self._replay() is None:
            return lost
        # The prefix failed this time too: give up on the state rather than loop.
        self._history.clear()
        self._kill()
        self._worker = self._sandbox._spawn_checked()
        return f"{lost}, and replaying the snippets before it failed as well: every earlier variable is lost"

    def _replay(self) -> tuple[int, str] | None:
        """Run the history in the current worker; (index, what happened) of the first failure."""
        for i, code in enumerate(self._history):
            result = self._execute(code, self._sandbox.timeout)
            if result.timed_out or result.error is not None:
                what = "timed out" if result.timed_out else f"failed: {result.error.strip().splitlines()[-1]}"
                return i, what
        return None

    def close(self) -> None:
        """Kill the worker. Idempotent; safe to call from any thread."""
        self._closed = True
        self._kill()
        self._sandbox._forget(self)


def require_network_isolation(layers: Layers, allow_degraded: bool) -> None:
    """Refuse a worker that cannot block the network, unless degrading was asked for (then warn)."""
    if layers.network_blocked:
        return
    if not allow_degraded:
        raise RuntimeError(
            "sandbox: cannot block the network on this host (no network namespace, seccomp or "
            "Landlock). To run snippets anyway, with network access: agent.allow_degraded_network=true "
            "(training.py), +model.allow_degraded_network=true (inference.py), "
            "--allow_degraded_network true (deep_math.vllm_serve_agent), or "
            "Sandbox(allow_degraded_network=True)"
        )
    logger.warning("sandbox: running WITHOUT network isolation (allow_degraded_network=True)")


class Sandbox:
    """Runs model-written Python snippets in confined worker processes.

    timeout: per-snippet hard wall-clock limit in seconds; the worker is killed at it.
    memory_mb: address-space limit of each worker (>= 1024; numpy/scipy/sympy already take some).
    max_output_chars: cap on each result's output (and error text).
    allow_degraded_network: start even when neither a network namespace, seccomp nor Landlock can
        block the network (logged as a warning). Otherwise such a host is refused at start.

    Thread-safe: `session()` and `Session.run` may be called from many threads at once.
    """

    def __init__(
        self,
        timeout: float = 20.0,
        memory_mb: int = 2048,
        max_output_chars: int = 2000,
        allow_degraded_network: bool = False,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout ({timeout}) must be > 0 seconds")
        if memory_mb < 1024:
            raise ValueError(
                f"memory_mb ({memory_mb}) must be >= 1024: the warm numpy/scipy/sympy image needs it"
            )
        if max_output_chars < 100:
            raise ValueError(f"max_output_chars ({max_output_chars}) must be >= 100")
        self.timeout = float(timeout)
        self.allow_degraded_network = allow_degraded_network
        # JSON may escape each char to 12 bytes; output and error are each capped near max_output_chars.
        self._max_reply_bytes = 12 * (2 * max_output_chars + 512) + 4096
        # CPU seconds per worker: a backstop should the wall-clock watchdog fail.
        config = WorkerConfig(memory_mb, int(max(60, 30 * timeout)), max_output_chars)
        self._zygote = Zygote(config)
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._sessions_lock = threading.Lock()
        self._closed = False
        try:
            probe = self._zygote.spawn()
            probe.kill()
            self.layers: Layers = probe.layers
            self._check_layers(probe.layers)
        except BaseException:
            self._zygote.close()
            raise

    def _check_layers(self, layers: Layers) -> None:
        if layers.errors:
            logger.warning("sandbox: some OS layers are unavailable: %s", "; ".join(layers.errors))
        require_network_isolation(layers, self.allow_degraded_network)

    def _spawn_checked(self) -> WorkerHandle:
        if self._closed:
            raise RuntimeError("the sandbox is closed")
        worker = self._zygote.spawn()
        try:
            require_network_isolation(worker.layers, self.allow_degraded_network)
        except RuntimeError:
            worker.kill()
            raise
        return worker

    def session(self, seed: int | None = None) -> Session:
        """A new, isolated session (one per trace), its random streams seeded with `seed` (see
        `Session`). Close it when the trace ends."""
        session = Session(self, seed)
        with self._sessions_lock:
            self._sessions.add(session)
        return session

    def _forget(self, session: Session) -> None:
        with self._sessions_lock:
            self._sessions.discard(session)

    def close(self) -> None:
        """Kill every session's worker and the zygote. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._sessions_lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()
        self._zygote.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
