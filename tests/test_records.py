"""The record vocabulary: TraceStats counters travel from the agent's Trace through inference's
generated file into evaluation's Sample unchanged, and "used a tool" has one definition."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from deep_math.agent.trace import Trace
from deep_math.data import Problem
from deep_math.evaluation.records import Sample, parse_record, read_generated
from deep_math.inference.records import GeneratedFile
from deep_math.inference.run import make_record
from deep_math.records import (
    OPTIONAL_SAMPLE_FIELDS,
    RECORD_FIELDS,
    SAMPLE_FIELDS,
    STAT_FIELDS,
    TraceStats,
    used_tool_successfully,
)
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


@pytest.mark.parametrize("n", [1, 2])
def test_inference_record_has_the_named_fields_and_parses_for_evaluation(tmp_path, n):
    full = Trace(prompt_ids=[1], text="a", finish_reason="error", tool_output_spans=[(0, 1)], error="boom",
                 tool_calls=1)  # fmt: skip
    bare = Trace(prompt_ids=[1], text="b", finish_reason="eos")
    traces = [full, bare][:n]
    record = make_record(Problem(id="p", problem="1+1?", answer="2"), "p", traces, {"model": "m"})
    assert tuple(record) == RECORD_FIELDS  # the keys, in the order written
    assert record["text"] == ("a" if n == 1 else ["a", "b"])  # one sample: a string
    assert tuple(record["samples"][0]) == SAMPLE_FIELDS
    if n == 2:
        assert tuple(record["samples"][1]) == tuple(
            k for k in SAMPLE_FIELDS if k not in OPTIONAL_SAMPLE_FIELDS
        )
    path = tmp_path / "gen.jsonl"
    with GeneratedFile(path, {"model": "m"}) as out:
        out.write(record)
    (problem,) = read_generated(path, strict=True).problems
    assert problem == parse_record(record, 0, 1)
    assert (problem.id, problem.problem, problem.target, problem.meta) == ("p", "1+1?", "2", {"model": "m"})
    assert [s.text for s in problem.samples] == [t.text for t in traces]
    assert problem.samples[0].finish_reason == "error" and problem.samples[0].tool_calls == 1
    assert {f.name for f in dataclasses.fields(Sample)} <= set(SAMPLE_FIELDS)  # evaluation reads these


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
