"""Failures the model cannot fix are sandbox errors: typed on the result, counted apart from the
model's own tool errors in the trace, the generated-file record, the evaluation and the reward."""

from __future__ import annotations

import json
import sys
import time

import pytest

from deep_math.agent import AgentConfig
from deep_math.agent.executor import format_observation
from deep_math.agent.runner import AgentRunner
from deep_math.agent.trace import Trace
from deep_math.engines.base import SamplingParams
from deep_math.engines.scripted import ScriptedEngine
from deep_math.evaluation.records import read_generated
from deep_math.sandbox import RunResult, Sandbox, policy, worker
from deep_math.training.rewards import code_use

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

CALL = "<tool_call>\n{code}\n</tool_call>"


def escape(code: str) -> str:
    """A snippet that runs `code` with the real builtins (sympify evaluates strings with them)."""
    return f"import sympy\nsympy.sympify({f'__import__({chr(39)}builtins{chr(39)}).exec({code!r})'!r})"


# A native crash: the worker dies, which the model cannot fix (nor see the cause of).
CRASH = escape("__import__('ctypes').string_at(0)")
# Breaks the worker's own checker, so the next snippet fails inside the sandbox's machinery.
BREAK_CHECKER = escape("__import__('sys').modules['deep_math.sandbox.policy'].check_source = None")


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(timeout=5.0, memory_mb=2048, max_output_chars=2000) as sb:
        yield sb


@pytest.mark.parametrize(
    "result, kind",
    [
        (RunResult(output="4\n"), "ok"),
        (RunResult(error="ZeroDivisionError: division by zero"), "error"),
        (RunResult(error="TimeoutError: ...", timed_out=True), "timeout"),
        (RunResult(error="WorkerCrashed: ...", sandbox_error="worker died"), "sandbox_error"),
    ],
)
def test_run_result_kind(result, kind):
    assert result.kind == kind


# --- in the worker (no processes) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "code", ["print(1", "  x = 1", "import os", "().__class__.__base__", "def f(:\n    pass"]
)
def test_snippet_mistakes_at_check_time_are_the_models(code):
    reply = worker.WorkerSession(2000).run(code)
    assert reply["error"] is not None and "sandbox_error" not in reply


def test_a_failure_of_the_checker_is_a_sandbox_error(monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("internal bookkeeping")

    monkeypatch.setattr(policy, "check_source", broken)
    reply = worker.WorkerSession(2000).run("print(1)")
    assert reply["error"].startswith("SandboxError: the sandbox failed internally")
    assert "not an error in the code" in reply["error"]
    assert reply["sandbox_error"] == "KeyError: 'internal bookkeeping'"


def test_a_snippet_error_inside_library_code_stays_the_models():
    reply = worker.WorkerSession(2000).run("import sympy\nsympy.Matrix([[1, 2]]).inv()")
    assert "NonSquareMatrixError" in reply["error"] and "sandbox_error" not in reply


# --- through the real sandbox -------------------------------------------------------------------


def test_worker_that_dies_is_a_sandbox_error(sandbox):
    s = sandbox.session()
    try:
        assert s.run("z = 3").kind == "ok"
        crash = s.run(CRASH)
        assert crash.kind == "sandbox_error" and "WorkerCrashed" in crash.error
        after = s.run("z * 2")
        assert after.rebuilt and after.kind == "ok" and after.output == "6"
    finally:
        s.close()


def test_broken_worker_machinery_is_a_sandbox_error_and_the_worker_keeps_serving(sandbox):
    s = sandbox.session()
    try:
        assert s.run(BREAK_CHECKER).kind == "ok"
        broken = s.run("print(1)")
        assert broken.kind == "sandbox_error", broken
        assert broken.error.startswith("SandboxError:") and "TypeError" in broken.sandbox_error
        assert not broken.rebuilt and not s.run("print(2)").rebuilt  # same worker, still answering
    finally:
        s.close()


def test_snippet_failing_after_a_failed_replay_is_a_sandbox_error(sandbox):
    s = sandbox.session()
    try:
        # Succeeds now, fails when replayed after the kill below (it reads the clock).
        assert s.run(f"import time\nassert time.time() < {time.time() + 1.0}\nb = 2").kind == "ok"
        time.sleep(1.0)
        assert s.run("while True:\n    pass", timeout=0.5).kind == "timeout"
        result = s.run("print(b)")
        assert result.rebuilt and result.replay_error is not None
        assert result.kind == "sandbox_error" and "NameError" in result.error
        assert "SandboxError: the session was restarted and the replay of earlier snippet 1" in result.error
        fine = s.run("print(3)")
        assert fine.kind == "ok"
    finally:
        s.close()


def test_replay_failure_is_told_to_the_model_even_when_the_snippet_succeeds():
    result = RunResult(output="3\n", rebuilt=True, replay_error="replay of earlier snippet 1 failed: X")
    assert result.kind == "ok"
    assert "Note: the session was restarted and the replay of earlier snippet 1 failed" in format_observation(
        result
    )


# --- counted in the trace, the record, the evaluation and the reward -----------------------------


def test_agent_counts_sandbox_errors_apart_from_tool_errors(tokenizer, sandbox):
    script = [
        CALL.format(code="x = 6 * 7"),
        CALL.format(code=CRASH),
        CALL.format(code="1 / 0"),
        CALL.format(code="print(x)"),
        "\\boxed{42}",
    ]
    runner = AgentRunner(ScriptedEngine(tokenizer, script), AgentConfig(), sandbox=sandbox)
    trace = runner.run_one(tokenizer.encode("6*7?"), SamplingParams(temperature=0.0, max_tokens=10_000))
    assert (trace.tool_calls, trace.tool_errors, trace.tool_timeouts, trace.sandbox_errors) == (4, 1, 0, 1)
    assert "WorkerCrashed" in trace.text and "```output\n42\n```" in trace.text
    assert trace.sample_record()["sandbox_errors"] == 1


def test_only_sandbox_errors_do_not_count_as_using_the_tool():
    trace = Trace(prompt_ids=[1], tool_calls=1, sandbox_errors=1)
    assert not trace.used_tool_successfully
    assert code_use(["..."], tool_calls=[1], tool_errors=[0], tool_timeouts=[0], sandbox_errors=[1]) == [0.0]
    assert code_use(["..."], tool_calls=[2], tool_errors=[0], tool_timeouts=[0], sandbox_errors=[1]) == [1.0]


def test_evaluation_reads_the_counter_and_old_records_without_it(tmp_path):
    new = {"text": "\\boxed{1}", "tool_calls": 2, "tool_errors": 0, "tool_timeouts": 0, "sandbox_errors": 1}
    old = {"text": "\\boxed{1}", "tool_calls": 1, "tool_errors": 0, "tool_timeouts": 0}
    path = tmp_path / "g.jsonl"
    path.write_text(
        "".join(json.dumps({"id": i, "target": "1", "samples": [s]}) + "\n" for i, s in enumerate([new, old]))
    )
    samples = [p.samples[0] for p in read_generated(path).problems]
    assert [s.sandbox_errors for s in samples] == [1, None]
