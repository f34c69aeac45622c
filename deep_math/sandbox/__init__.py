"""Sandboxed, stateful Python for model-written math snippets.

    from deep_math.sandbox import Sandbox
    with Sandbox(timeout=20.0, memory_mb=2048, max_output_chars=2000) as sandbox:
        session = sandbox.session()                 # one per trace
        result = session.run("import sympy as sp\\nx = sp.symbols('x')\\nsp.solve(x**2 - 4, x)")
        result.output, result.error, result.kind       # '[-2, 2]', None, 'ok'
        session.close()

How it works: `Sandbox` starts a zygote (a fresh interpreter, minimal environment) that imports
numpy/sympy/scipy once; each session is a worker forked from it (~ms), keeping the session's
globals and running snippets as real CPython `exec`. The caller's process never runs model code.

What is covered (each layer has tests in tests/sandbox/):
1. Policy (policy.py): import allow-list with actionable errors, restricted builtins (no open,
   input, compile; checked getattr/eval/exec), no dunder/frame introspection in snippet code.
   A guard rail for clear errors, not the boundary: sympify/lambdify/parse_expr evaluate strings
   with real builtins, so containment comes from the OS layers.
2. OS limits (oslimits.py): address space, CPU seconds, no file growth, few open files, no core
   dumps; seccomp refuses new processes (fork/exec/clone without CLONE_THREAD), opening files for
   writing, filesystem mutation, sockets, ptrace, signals to other processes; Landlock limits the
   filesystem to read-only access to the Python installation and system libraries.
3. Network: a new network namespace (via a user namespace, which also drops the worker's
   capabilities); independently seccomp refuses socket() and Landlock (ABI >= 4) TCP
   bind/connect. With none of these the Sandbox refuses to start unless allow_degraded_network.
4. Watchdog: the calling thread waits with a deadline and SIGKILLs the worker through a pidfd at
   the timeout; no handler, thread or ignored signal in the worker survives SIGKILL. The worker's
   environment is empty; workers die with the zygote (PR_SET_PDEATHSIG), which dies with the caller
   (EOF of its control socket). Output is bounded while it is captured.
A killed or crashed session is rebuilt on its next run by replaying its successful snippets; a
replay that fails is told to the model in that run's output, with what was lost. A worker that
cannot be started (failed fork, no descriptors, a zygote that does not answer in time) fails
only that session or run (`SpawnError`); the zygote and the other sessions go on.
A run's `kind` tells the model's own errors ("error", "timeout") from failures it cannot fix
("sandbox_error": the worker died, the sandbox's own code raised, or a rebuild's replay failed);
the agent counts the latter as `sandbox_errors`, apart from `tool_errors`.

What is NOT covered: a sandbox is not a VM. Kernel bugs reachable through the allowed syscalls,
side channels, reading files inside the Python installation, and using the whole CPU/memory budget
until the kill remain possible. Snippets that failed are not replayed, so a rebuilt session may
lack partial effects of failed snippets; replay assumes snippets are deterministic apart from
`random` and numpy's global state, which each session seeds (`sandbox.session(seed=...)`) and
reseeds identically before a replay.
Output printed before a timeout is lost with the killed worker. Linux only.
"""

from deep_math.sandbox.oslimits import Layers
from deep_math.sandbox.policy import ALLOWED_MODULES
from deep_math.sandbox.sandbox import RunResult, Sandbox, Session
from deep_math.sandbox.spawner import SpawnError

__all__ = ["ALLOWED_MODULES", "Layers", "RunResult", "Sandbox", "Session", "SpawnError"]
