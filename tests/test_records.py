"""The record vocabulary: TraceStats counters travel from the agent's Trace through inference's
generated file into evaluation's Sample unchanged, and "used a tool" has one definition."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from deep_math.agent.trace import Trace
from deep_math.data import Problem
from deep_math.evaluation.records import Sample, read_generated
from deep_math.inference.records import GeneratedFile
from deep_math.inference.run import make_record
from deep_math.records import STAT_FIELDS, TraceStats, used_tool_successfully
from deep_math.training.rewards import code_use


def test_generated_record_round_trips_every_counter(tmp_path):
    traces = [
        Trace(prompt_ids=[1], text="x \\boxed{4}", finish_reason="answer",
              **{name: i + 1 for i, name in enumerate(STAT_FIELDS)}),
        Trace(prompt_ids=[1], text="no tool", finish_reason="eos", tool_output_spans=[(0, 2)]),
    ]  # fmt: skip
    meta = {"model": "m"}
    path = tmp_path / "gen.jsonl"
    with GeneratedFile(path, meta) as out:
        out.write(make_record(Problem(id="p0", problem="2+2?", answer="4"), "p0", traces, meta))
    (problem,) = read_generated(path).problems
    assert problem.id == "p0" and problem.target == "4" and problem.problem == "2+2?"
    for trace, sample in zip(traces, problem.samples, strict=True):
        assert sample.text == trace.text and sample.finish_reason == trace.finish_reason
        assert {name: getattr(sample, name) for name in STAT_FIELDS} == trace.stats()


def test_every_counter_is_a_sample_field_and_keyword_only():
    assert set(STAT_FIELDS) <= {f.name for f in dataclasses.fields(Sample)}
    with pytest.raises(TypeError):
        TraceStats(1)  # keyword-only: Trace's positional prompt_ids cannot collide with a counter
    assert Trace([7], tool_calls=2).prompt_ids == [7]


@pytest.mark.parametrize(
    ("calls", "errors", "timeouts", "sandbox", "used"),
    [(0, 0, 0, 0, False), (1, 0, 0, 0, True), (1, 1, 0, 0, False), (2, 1, 0, 0, True),
     (2, 0, 1, 1, False), (3, 1, 1, 0, True)],
)  # fmt: skip
def test_used_tool_has_one_definition(calls, errors, timeouts, sandbox, used):
    stats = TraceStats(tool_calls=calls, tool_errors=errors, tool_timeouts=timeouts, sandbox_errors=sandbox)
    assert stats.used_tool_successfully is used
    assert used_tool_successfully(calls, errors, timeouts, sandbox) is used
    reward = code_use(["t"], tool_calls=[calls], tool_errors=[errors], tool_timeouts=[timeouts],
                      sandbox_errors=[sandbox])  # fmt: skip
    assert reward == [1.0 if used else 0.0]


def test_records_module_is_light():
    import subprocess

    code = "import sys, deep_math.records; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
