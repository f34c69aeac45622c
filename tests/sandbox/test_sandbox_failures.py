"""Sandbox failure modes around rebuilds and the zygote: each fails one run or one session, never
the caller or the other sessions, and the model is told the truth about lost state."""

from __future__ import annotations

import os
import socket
import sys
import textwrap

import pytest

from deep_math.agent.executor import format_observation
from deep_math.sandbox import RunResult, Sandbox
from deep_math.sandbox.protocol import recv_msg, send_msg
from deep_math.sandbox.spawner import SpawnError, WorkerConfig, Zygote, zygote_sys_path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

CONFIG = WorkerConfig(memory_mb=2048, cpu_seconds=60, max_output_chars=2000)


class PatchedZygote(Zygote):
    """A real zygote whose interpreter first runs `patch` (to make its second fork misbehave)."""

    patch = ""

    def _bootstrap(self) -> str:
        return f"import sys; sys.path[0:0] = {zygote_sys_path()!r}\n{self.patch}\nfrom deep_math.sandbox.zygote import main; main()"


def serves(worker) -> bool:
    send_msg(worker.sock, {"code": "print(6 * 7)"})
    return recv_msg(worker.sock, 1 << 16)["output"] == "42\n"


def test_a_failed_fork_fails_that_spawn_only():
    class FailingFork(PatchedZygote):
        patch = textwrap.dedent(
            """
            import os
            _fork, _calls = os.fork, []
            def _second_fails():
                _calls.append(1)
                if len(_calls) == 2:
                    raise OSError(11, "Resource temporarily unavailable")
                return _fork()
            os.fork = _second_fails
            """
        )

    zygote = FailingFork(CONFIG)
    try:
        first = zygote.spawn()
        with pytest.raises(SpawnError, match="could not fork a worker"):
            zygote.spawn()
        assert first.alive and serves(first)  # the live worker was not killed with the zygote
        third = zygote.spawn()
        assert serves(third) and serves(first)
    finally:
        zygote.close()


def test_a_malformed_spawn_request_gets_a_reply():
    zygote = Zygote(CONFIG)
    try:
        zygote._ctrl.settimeout(10)
        zygote._ctrl.send(b"spawn 99")  # no fd passed along
        reply = zygote._ctrl.recv(1024)
        assert b'"error"' in reply and b'"id": 99' in reply
        zygote._ctrl.send(b"bogus")
        assert b'"error"' in zygote._ctrl.recv(1024)
        assert serves(zygote.spawn())
    finally:
        zygote.close()


def test_a_zygote_that_does_not_answer_fails_that_spawn_only():
    class SlowSecondSpawn(PatchedZygote):
        request_timeout_s = 3.0  # the third request then waits ~1 s of its 3 for the zygote to wake
        patch = textwrap.dedent(
            """
            import time
            from deep_math.sandbox import zygote as _z
            _spawn, _calls = _z._spawn, []
            def _slow_second(*args):
                _calls.append(1)
                if len(_calls) == 2:
                    time.sleep(4.0)
                return _spawn(*args)
            _z._spawn = _slow_second
            """
        )

    zygote = SlowSecondSpawn(CONFIG)
    try:
        first = zygote.spawn()
        with pytest.raises(SpawnError, match="did not answer"):
            zygote.spawn()
        third = zygote.spawn()  # the late answer to the second request is discarded
        assert serves(third) and serves(first)
    finally:
        zygote.close()


def test_a_pidfd_that_cannot_be_received_fails_that_spawn_only(monkeypatch):
    zygote = Zygote(CONFIG)
    try:
        first = zygote.spawn()
        real = socket.recv_fds

        def out_of_fds(sock, bufsize, maxfds, flags=0):  # as with no free descriptor (MSG_CTRUNC)
            msg, fds, msg_flags, address = real(sock, bufsize, maxfds, flags)
            for fd in fds:
                os.close(fd)
            return msg, [], msg_flags, address

        monkeypatch.setattr(socket, "recv_fds", out_of_fds)
        with pytest.raises(SpawnError, match="pidfd"):
            zygote.spawn()
        monkeypatch.undo()
        assert serves(first) and serves(zygote.spawn())  # no zygote restart killed the live worker
    finally:
        zygote.close()


# --- session rebuilds ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(timeout=5.0, memory_mb=2048, max_output_chars=2000) as sb:
        yield sb


def slow_on_replay(session, fail_from: dict[str, int]):
    """Make `session` time out (and lose its worker) from the n-th run (counted from now) of the
    given snippets."""
    real, runs = session._execute, {}

    def execute(code, timeout):
        runs[code] = runs.get(code, 0) + 1
        if code in fail_from and runs[code] >= fail_from[code]:
            session._kill()
            return RunResult(error="TimeoutError: ...", timed_out=True)
        return real(code, timeout)

    session._execute = execute


def test_a_second_replay_timeout_leaves_a_working_session_and_says_all_is_lost(sandbox):
    s = sandbox.session()
    try:
        assert s.run("a = 1").kind == "ok" and s.run("b = 2").kind == "ok"
        # "a = 1" replays fine once, then times out; "b = 2" times out on its first replay
        slow_on_replay(s, {"a = 1": 2, "b = 2": 1})
        s._kill()
        result = s.run("print(a)")
        assert result.rebuilt and "every earlier variable is lost" in result.replay_error
        assert result.kind == "sandbox_error" and "NameError" in result.error
        assert "every earlier variable is lost" in format_observation(result)
        assert s.run("print(3)").output == "3\n"
    finally:
        s.close()


def test_a_worker_that_cannot_be_restarted_fails_the_run_not_the_caller(sandbox, monkeypatch):
    s = sandbox.session()
    try:
        assert s.run("x = 1").kind == "ok"
        s._kill()

        def refuse():
            raise SpawnError("the sandbox zygote could not start a worker: out of pids")

        monkeypatch.setattr(sandbox, "_spawn_checked", refuse)
        result = s.run("print(x)")
        assert result.kind == "sandbox_error" and "could not start a Python process" in result.error
        monkeypatch.undo()
        assert s.run("print(x)").output == "1\n"  # the next run rebuilds and replays
    finally:
        s.close()


def test_the_model_is_told_about_a_failed_replay_whatever_the_run_did():
    replay = "replay of earlier snippet 1 timed out; its effects and later ones are lost"
    for result in (
        RunResult(output="1\n", rebuilt=True, replay_error=replay),
        RunResult(error="TimeoutError: killed", timed_out=True, rebuilt=True, replay_error=replay),
        RunResult(error="WorkerCrashed: died", sandbox_error="died", rebuilt=True, replay_error=replay),
    ):
        assert replay in format_observation(result)


def test_a_timeout_after_a_failed_replay_says_so_in_its_error(sandbox):
    s = sandbox.session()
    try:
        assert s.run("a = 1").kind == "ok"
        slow_on_replay(s, {"a = 1": 1})
        s._kill()
        result = s.run("while True:\n    pass", timeout=0.5)
        assert (
            result.timed_out
            and "the session was restarted and the replay of earlier snippet 1" in result.error
        )
    finally:
        s.close()
