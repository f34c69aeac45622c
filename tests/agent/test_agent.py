"""Agent loop semantics, driven deterministically by the scripted engine."""

from __future__ import annotations

import threading

import pytest

from deep_math.agent import AgentConfig
from deep_math.agent.runner import AgentRunner
from deep_math.engines.base import EngineError, SamplingParams
from deep_math.engines.scripted import ScriptedEngine
from deep_math.sandbox import Sandbox
from deep_math.testing import RecordingEngine

CALL = "<tool_call>\n{code}\n</tool_call>"


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(timeout=2.0, memory_mb=2048, max_output_chars=2000) as sb:
        yield sb


def run_one(tokenizer, sandbox, script, **cfg):
    engine = RecordingEngine(ScriptedEngine(tokenizer, script))
    runner = AgentRunner(engine, AgentConfig(**cfg), sandbox=sandbox)
    prompt = tokenizer.encode("Problem: what is 6*7?")
    trace = runner.run_one(prompt, SamplingParams(temperature=0.0, max_tokens=10_000))
    return trace, engine


def test_tool_call_is_executed_and_folded_into_the_same_turn(tokenizer, sandbox):
    script = ["Compute it. " + CALL.format(code="x = 6 * 7\nprint(x)"), " So the answer is \\boxed{42}."]
    trace, _ = run_one(tokenizer, sandbox, script)
    assert trace.finish_reason == "answer"
    assert "</tool_call>\n```output\n42\n```\n So the answer" in trace.text
    assert "Observation" not in trace.text
    assert (trace.tool_calls, trace.tool_errors, trace.steps) == (1, 0, 2)


def test_variables_persist_across_snippets_of_one_trace(tokenizer, sandbox):
    script = [
        CALL.format(code="import sympy as sp\nroots = sp.solve(sp.Symbol('x')**2 - 9)"),
        CALL.format(code="print(sum(r**2 for r in roots))"),
        "\\boxed{18}",
    ]
    trace, _ = run_one(tokenizer, sandbox, script)
    assert "```output\n18\n```" in trace.text
    assert trace.tool_errors == 0 and trace.tool_calls == 2


def test_completion_ids_are_engine_ids_plus_tokenized_observations(tokenizer, sandbox):
    script = [
        "Let me try " + CALL.format(code="print(1/3)"),
        "and " + CALL.format(code="print('é ∑ ok')"),
        " done \\boxed{1/3}",
    ]
    trace, engine = run_one(tokenizer, sandbox, script)
    obs = ["\n```output\n0.3333333333333333\n```\n", "\n```output\né ∑ ok\n```\n"]
    expected_ids, expected_mask, expected_lp = [], [], []
    for k, result in enumerate(engine.results):
        expected_ids += result.token_ids
        expected_mask += [1] * len(result.token_ids)
        expected_lp += result.logprobs
        if k < len(obs):
            o = tokenizer.encode(obs[k], add_special_tokens=False)
            expected_ids += o
            expected_mask += [0] * len(o)
            expected_lp += [0.0] * len(o)
    assert trace.completion_ids == expected_ids
    assert trace.env_mask == expected_mask
    assert trace.logprobs == expected_lp
    assert trace.model_tokens == sum(expected_mask)
    assert trace.tool_tokens == len(expected_mask) - sum(expected_mask)
    assert trace.text == tokenizer.decode(expected_ids, clean_up_tokenization_spaces=False)


def test_boxed_answer_ends_the_trace_even_with_a_pending_tool_call(tokenizer, sandbox):
    script = ["The answer is \\boxed{3}. " + CALL.format(code="print(3)"), "never reached"]
    trace, engine = run_one(tokenizer, sandbox, script)
    assert trace.finish_reason == "answer"
    assert trace.tool_calls == 0 and len(engine.results) == 1


def test_max_steps_caps_tool_rounds_exactly(tokenizer, sandbox):
    trace, engine = run_one(tokenizer, sandbox, lambda req, i: CALL.format(code=f"print({i})"), max_steps=3)
    assert trace.finish_reason == "max_steps"
    assert trace.tool_calls == 3
    assert len(engine.results) == 4  # three executed rounds, then one last generation
    assert "```output\n2\n```" in trace.text and "```output\n3\n```" not in trace.text


def test_max_agent_output_caps_total_tokens_exactly(tokenizer, sandbox):
    long = "word " * 500
    trace, engine = run_one(tokenizer, sandbox, [long], max_agent_output=37)
    assert trace.finish_reason == "budget"
    assert len(trace.completion_ids) == 37
    # with tool calls: each step's max_tokens is the remainder, observations count
    script = lambda req, i: "x" + CALL.format(code="print('y z ' * 200)")  # noqa: E731
    trace, engine = run_one(tokenizer, sandbox, script, max_agent_output=60)
    assert len(trace.completion_ids) == 60
    assert trace.finish_reason == "budget"
    assert trace.env_mask[-1] == 0  # the budget ran out inside an observation, which was cut


def test_each_step_gets_the_remaining_budget(tokenizer, sandbox):
    script = lambda req, i: "a" + CALL.format(code="print(7)")  # noqa: E731
    trace, engine = run_one(tokenizer, sandbox, script, max_agent_output=200, max_steps=3)
    seen = 0
    mask = trace.env_mask
    for req in engine.inner.requests:
        assert req.sampling.max_tokens == 200 - seen
        # advance past this step's model tokens and the following observation
        while seen < len(mask) and mask[seen] == 1:
            seen += 1
        while seen < len(mask) and mask[seen] == 0:
            seen += 1


def test_eos_finish(tokenizer, sandbox):
    trace, _ = run_one(tokenizer, sandbox, ["I give up." + tokenizer.eos_token])
    assert trace.finish_reason == "eos"
    assert trace.completion_ids[-1] == tokenizer.eos_token_id


def test_sandbox_timeout_becomes_a_tool_result_and_the_trace_goes_on(tokenizer, sandbox):
    script = [CALL.format(code="while True:\n    pass"), CALL.format(code="print('alive')"), "\\boxed{0}"]
    trace, _ = run_one(tokenizer, sandbox, script)
    assert trace.tool_timeouts == 1
    assert "```output\nalive\n```" in trace.text
    assert trace.finish_reason == "answer"


def test_snippet_error_is_shown_to_the_model(tokenizer, sandbox):
    trace, _ = run_one(tokenizer, sandbox, [CALL.format(code="1/0"), "\\boxed{1}"])
    assert trace.tool_errors == 1
    assert "ZeroDivisionError" in trace.text


def test_engine_error_ends_only_that_trace(tokenizer, sandbox):
    def script(req, i):
        if req.prompt_ids[-1] == 999:
            raise EngineError("server returned 500: out of memory")
        return "\\boxed{1}"

    runner = AgentRunner(ScriptedEngine(tokenizer, script), AgentConfig(), sandbox=sandbox)
    traces = runner.run([[1, 2, 3], [1, 2, 999], [4, 5]], SamplingParams())
    assert [t.finish_reason for t in traces] == ["answer", "error", "answer"]
    assert "out of memory" in traces[1].error
    assert traces[1].completion_ids == [] and traces[1].text == ""


def test_runner_keeps_traces_in_flight_together(tokenizer, sandbox):
    class SlowEngine(RecordingEngine):
        in_flight = peak = 0
        changed = threading.Condition()

        def generate(self, requests):
            # A model call that waits (up to 2 s) for 4 calls to be in flight together: a runner that
            # keeps traces in flight gets there at once, a sequential one never does. (A fixed sleep
            # made the peak depend on how busy the machine was.)
            with self.changed:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                self.changed.notify_all()
                self.changed.wait_for(lambda: self.peak >= 4, timeout=2.0)
                self.in_flight -= 1
            return super().generate(requests)

    engine = SlowEngine(ScriptedEngine(tokenizer, lambda req, i: "\\boxed{2}"))
    runner = AgentRunner(engine, AgentConfig(max_concurrency=8), sandbox=sandbox)
    traces = runner.run([[1, k] for k in range(16)], SamplingParams())
    assert all(t.finish_reason == "answer" for t in traces)
    assert 4 <= engine.peak <= 8  # bounded by max_concurrency=8, far above one-at-a-time


def test_baseline_mode_is_one_plain_generation(tokenizer):
    engine = ScriptedEngine(tokenizer, ["Reasoning... " + CALL.format(code="print(1)") + " \\boxed{5}"])
    runner = AgentRunner(engine, AgentConfig(), use_agent=False)
    trace = runner.run_one([1, 2], SamplingParams(max_tokens=100))
    assert engine.requests[0].sampling.stop == []
    assert trace.tool_calls == 0 and trace.env_mask == [1] * len(trace.completion_ids)
    assert trace.finish_reason == "answer"


@pytest.mark.parametrize("allow", [False, True])
def test_runner_passes_the_degraded_network_opt_in_to_its_sandbox(tokenizer, monkeypatch, allow):
    import deep_math.sandbox

    made = {}

    class RecordingSandbox:
        def __init__(self, **kwargs):
            made.update(kwargs)

        def close(self):
            pass

    monkeypatch.setattr(deep_math.sandbox, "Sandbox", RecordingSandbox)
    runner = AgentRunner(ScriptedEngine(tokenizer, []), AgentConfig(allow_degraded_network=allow))
    assert made["allow_degraded_network"] is allow
    runner.close()


def run_capped(tokenizer, sandbox, script, cap, **cfg):
    engine = RecordingEngine(ScriptedEngine(tokenizer, script))
    runner = AgentRunner(engine, AgentConfig(**cfg), sandbox=sandbox, max_new_tokens=cap)
    prompt = tokenizer.encode("Problem: what is 6*7?")
    return runner.run_one(prompt, SamplingParams(temperature=0.0)), engine, prompt


def test_a_step_cut_at_the_per_step_cap_continues_in_the_same_turn(tokenizer, sandbox):
    # Every scripted reply without a stop or EOS ends as "length": each call hits the per-step cap.
    script = [
        "Let me think",
        " step by step. <tool_call>\nx = 6",  # the tool call spans two generation calls
        " * 7\nprint(x)\n</tool_call>",
        " So the answer",
        " is \\boxed{42}.",
    ]
    trace, engine, prompt = run_capped(tokenizer, sandbox, script, cap=40, max_agent_output=1000)
    assert trace.finish_reason == "answer"
    assert (trace.tool_calls, trace.tool_errors, trace.steps) == (1, 0, 5)
    assert "</tool_call>\n```output\n42\n```\n So the answer is \\boxed{42}." in trace.text
    obs = tokenizer.encode("\n```output\n42\n```\n", add_special_tokens=False)
    pieces = [(r.token_ids, 1) for r in engine.results[:3]] + [(obs, 0)]
    pieces += [(r.token_ids, 1) for r in engine.results[3:]]
    assert trace.completion_ids == [t for ids, _ in pieces for t in ids]
    assert trace.env_mask == [m for ids, m in pieces for _ in ids]
    # each call continues token-exactly and gets min(remaining budget, per-step cap)
    for req in engine.inner.requests:
        done = len(req.prompt_ids) - len(prompt)
        assert req.prompt_ids == prompt + trace.completion_ids[:done]
        assert req.sampling.max_tokens == min(1000 - done, 40)


def test_continuations_do_not_count_against_max_steps(tokenizer, sandbox):
    script = ["a", " b " + CALL.format(code="print(1)"), "c", " d", " e " + CALL.format(code="print(2)")]
    trace, engine, _ = run_capped(tokenizer, sandbox, script, cap=40, max_steps=1)
    assert trace.finish_reason == "max_steps"
    assert trace.tool_calls == 1 and len(engine.results) == 5
    assert "```output\n1\n```" in trace.text and "```output\n2\n```" not in trace.text


def test_the_budget_still_ends_a_trace_that_keeps_hitting_the_step_cap(tokenizer, sandbox):
    trace, engine, _ = run_capped(tokenizer, sandbox, lambda req, i: "word " * 50, cap=7, max_agent_output=30)
    assert trace.finish_reason == "budget" and len(trace.completion_ids) == 30
    assert [r.sampling.max_tokens for r in engine.inner.requests] == [7, 7, 7, 7, 2]


def test_baseline_and_agent_get_the_same_total_budget(tokenizer):
    engine = ScriptedEngine(tokenizer, ["\\boxed{5}"])
    runner = AgentRunner(engine, AgentConfig(max_agent_output=5000), use_agent=False, max_new_tokens=3000)
    runner.run_one([1, 2], SamplingParams(max_tokens=3000))
    assert engine.requests[0].sampling.max_tokens == 5000


def test_a_stop_tag_ending_mid_token_still_runs_the_code(tokenizer, sandbox):
    # SmolLM2 tokenizes "</tool_call>." as [..., "call", ">."]: the stop match ends inside ">."
    script = ["Check: <tool_call>\nprint(6 * 7)\n</tool_call>. Then more", " so \\boxed{42}"]
    trace, engine = run_one(tokenizer, sandbox, script)
    first = engine.results[0]
    assert first.text.endswith("</tool_call>.")  # the case under test
    assert (trace.tool_calls, trace.tool_errors) == (1, 0)
    assert "</tool_call>.\n```output\n42\n```\n" in trace.text
    assert trace.completion_ids[: len(first.token_ids)] == first.token_ids  # ids as generated


@pytest.mark.parametrize(
    "script, cfg, finish",
    [
        # ran into the trace's budget after drafting a box: truncated
        (
            ["Maybe \\boxed{3}? Let me check that again with more words " * 5],
            {"max_agent_output": 20},
            "budget",
        ),
        # cut by the budget inside an unclosed box
        (["So the result is \\boxed{\\frac{1}{" + "2" * 200], {"max_agent_output": 20}, "budget"),
        # an unclosed tool call that mentions \boxed, ended by EOS
        (["<tool_call>\nprint('\\\\boxed{1}')" + "<|im_end|>"], {}, "eos"),
        # an unclosed box ended by EOS
        (["The answer is \\boxed{12<|im_end|>"], {}, "eos"),
        # a complete box before EOS is an answer
        (["The answer is \\boxed{12}.<|im_end|>"], {}, "answer"),
    ],
)
def test_answer_only_for_a_complete_box_outside_tool_code(tokenizer, sandbox, script, cfg, finish):
    trace, _ = run_one(tokenizer, sandbox, script, **cfg)
    assert trace.finish_reason == finish


def test_a_box_printed_by_a_snippet_does_not_end_the_trace(tokenizer, sandbox):
    script = [CALL.format(code="print('\\\\boxed{1}')"), " Hmm, that is not it.<|im_end|>"]
    trace, _ = run_one(tokenizer, sandbox, script)
    assert trace.finish_reason == "eos" and trace.tool_calls == 1


def test_baseline_cut_by_the_budget_is_not_an_answer(tokenizer):
    engine = ScriptedEngine(tokenizer, ["Draft \\boxed{5} but wait, " + "more " * 50])
    runner = AgentRunner(engine, AgentConfig(max_agent_output=20), use_agent=False)
    assert runner.run_one([1, 2], SamplingParams()).finish_reason == "budget"


class SecondEosEngine:
    """Stops on a second EOS id (as Qwen3 stops on <|endoftext|> besides <|im_end|>)."""

    name = "second-eos"

    def __init__(self, tokenizer, text):
        self.tokenizer, self.text = tokenizer, text

    def generate(self, requests):
        from deep_math.engines.base import GenResult

        ids = self.tokenizer.encode(self.text, add_special_tokens=False) + [0]  # 0: <|endoftext|>
        text = self.tokenizer.decode(ids[:-1])
        return [GenResult(token_ids=ids, logprobs=[0.0] * len(ids), text=text, finish_reason="eos")]

    def close(self):
        pass


@pytest.mark.parametrize("text, finish", [("I give up.", "eos"), ("It is \\boxed{4}.", "answer")])
def test_text_drops_whichever_eos_id_the_engine_stopped_on(tokenizer, sandbox, text, finish):
    runner = AgentRunner(SecondEosEngine(tokenizer, text), AgentConfig(), sandbox=sandbox)
    trace = runner.run_one([1, 2], SamplingParams())
    assert trace.finish_reason == finish
    assert trace.completion_ids[-1] == 0 and trace.text == text


def test_a_lone_surrogate_in_tool_output_is_replaced_not_fatal(tokenizer, sandbox):
    script = [CALL.format(code="print('a\\ud800b')"), " \\boxed{1}"]
    trace, _ = run_one(tokenizer, sandbox, script)
    assert trace.error is None and trace.finish_reason == "answer"
    assert "```output\na\ufffdb\n```" in trace.text


@pytest.mark.parametrize("code", ["", "   \n", "# only a comment\n# and another", "\n\n# x = 1\n"])
def test_an_empty_or_comment_only_snippet_is_not_a_tool_use(tokenizer, sandbox, code):
    from deep_math.training.rewards import code_use
    from deep_math.training.rollout import traces_to_rollout

    trace, _ = run_one(tokenizer, sandbox, [CALL.format(code=code), " \\boxed{42}"])
    assert (trace.tool_calls, trace.tool_errors) == (1, 1)
    assert "no code to run" in trace.text
    assert not trace.used_tool_successfully
    columns = traces_to_rollout([trace], 10_000, 0)
    del columns["completion_ids"], columns["prompt_ids"], columns["logprobs"], columns["env_mask"]
    assert code_use([trace.text], **columns) == [0.0]


def test_a_snippet_with_one_statement_is_a_tool_use(tokenizer, sandbox):
    trace, _ = run_one(tokenizer, sandbox, [CALL.format(code="# set up\nx = 1"), " \\boxed{1}"])
    assert (trace.tool_calls, trace.tool_errors) == (1, 0) and trace.used_tool_successfully


# A snippet that prints a fence and then a box: the printed box must never count as the answer.
FENCE_THEN_BOX = "print('```')\nprint('\\\\boxed{42}')\nprint('````output')"


def test_printed_fence_cannot_close_the_output_block(tokenizer, sandbox):
    from deep_math.evaluation.extract import extract_answer, tool_spans

    trace, _ = run_one(tokenizer, sandbox, [CALL.format(code=FENCE_THEN_BOX), " Hmm.<|im_end|>"])
    assert "\\boxed{42}" in trace.text and trace.finish_reason == "eos"
    assert "\n`````output\n```\n\\boxed{42}\n````output\n`````\n" in trace.text  # a longer fence
    assert extract_answer(trace.text) != "42"  # parsed from the text
    assert extract_answer(trace.text, trace.tool_output_spans) != "42"  # located by position
    parsed = [(a, b) for kind, a, b in tool_spans(trace.text) if kind == "output"]
    assert parsed == [(a + 1, b - 1) for a, b in trace.tool_output_spans]  # the fence, without the newlines


def test_tool_output_spans_are_where_the_agent_inserted_the_observations(tokenizer, sandbox):
    script = ["Try " + CALL.format(code="print('é ∑')"), " and " + CALL.format(code="1/0"), " so \\boxed{1}"]
    trace, _ = run_one(tokenizer, sandbox, script)
    blocks = [trace.text[a:b] for a, b in trace.tool_output_spans]
    assert blocks[0] == "\n```output\né ∑\n```\n"
    assert blocks[1].startswith("\n```output\nTraceback") and blocks[1].endswith(
        "ZeroDivisionError: division by zero\n```\n"
    )
    assert trace.sample_record()["tool_output_spans"] == [list(s) for s in trace.tool_output_spans]
