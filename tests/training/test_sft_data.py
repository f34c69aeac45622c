"""SFT traces: the paper's inline format, loss mask 0 exactly on the sandbox's output block."""

from __future__ import annotations

import pytest

from deep_math.agent.executor import format_observation
from deep_math.data import load_problems
from deep_math.sandbox import RunResult
from deep_math.training.sft_data import IGNORE_INDEX, answer_reply, build_sft_examples, first_reply


class FakeSession:
    """Runs snippets as plain Python (the real sandbox is tested in test_sandbox.py)."""

    def run(self, code: str) -> RunResult:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(code, {})  # noqa: S102 - generator-written snippets
        return RunResult(output=buf.getvalue(), error=None, timed_out=False)

    def close(self) -> None:
        pass


class FakeSandbox:
    def session(self) -> FakeSession:
        return FakeSession()

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def examples(tokenizer):
    problems = load_problems("mini:train:8:5")
    examples, dropped = build_sft_examples(problems, tokenizer, sandbox=FakeSandbox())
    assert dropped == 0
    return problems, examples


def test_mask_is_zero_exactly_on_the_output_block(examples, tokenizer):
    problems, examples = examples
    tok = tokenizer
    for problem, ex in zip(problems, examples, strict=True):
        assert len(ex.completion_ids) == len(ex.env_mask)
        # the env_mask splits the completion into model / observation / model runs
        runs, prev = [], None
        for m in ex.env_mask:
            if m != prev:
                runs.append(m)
                prev = m
        assert runs == [1, 0, 1]
        observed = tok.decode([t for t, m in zip(ex.completion_ids, ex.env_mask, strict=True) if m == 0])
        printed = FakeSession().run(problem.extra["code"]).output
        assert observed == format_observation(RunResult(output=printed, error=None, timed_out=False))
        first = ex.env_mask.index(0)
        last = len(ex.env_mask) - ex.env_mask[::-1].index(0)
        assert tok.decode(ex.completion_ids[:first]) == first_reply(
            problem.extra["intro"], problem.extra["code"]
        )
        assert tok.decode(ex.completion_ids[last:-1]) == answer_reply(printed)
        assert ex.completion_ids[-1] == tok.eos_token_id  # the model learns to stop


def test_labels_train_on_model_tokens_only(examples):
    _, examples = examples
    for ex in examples:
        labels, ids = ex.labels, ex.input_ids
        assert len(labels) == len(ids)
        n_prompt = len(ex.prompt_ids)
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        for label, token, m in zip(labels[n_prompt:], ex.completion_ids, ex.env_mask, strict=True):
            assert label == (token if m == 1 else IGNORE_INDEX)


def test_boxed_answer_is_the_gold(examples):
    from deep_math.evaluation.extract import extract_answer
    from deep_math.evaluation.grading import is_correct

    problems, examples = examples
    for problem, ex in zip(problems, examples, strict=True):
        assert "<tool_call>" in ex.text and "```output" in ex.text
        assert is_correct(extract_answer(ex.text), problem.answer)
