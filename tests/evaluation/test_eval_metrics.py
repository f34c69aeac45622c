"""maj@k grouping and ties, pass@k against hand-computed values, records, lengths, config."""

from __future__ import annotations

import json

import pytest

from deep_math.config_utils import ConfigError, to_schema
from deep_math.evaluation.config import EvaluationConfig, build_metrics
from deep_math.evaluation.grading import Grade
from deep_math.evaluation.metrics import MajorityAtK, MeanAtK, PassAtK, ToolUse, TruncationRate, pass_at_k
from deep_math.evaluation.pool import GradingPool
from deep_math.evaluation.records import RecordError, read_generated
from deep_math.evaluation.run import evaluate_file, grade_problems


class WordTokenizer:
    """Whitespace 'tokenizer': one token per word."""

    def encode(self, text, add_special_tokens=False):
        return text.split()


@pytest.fixture(scope="module")
def serial_pool():
    with GradingPool(workers=0) as pool:
        yield pool


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 0, 1, 0.0),
        (4, 4, 2, 1.0),
        (4, 1, 1, 0.25),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (16, 3, 4, 1 - 715 / 1820),  # C(13,4)=715, C(16,4)=1820
        (3, 1, 3, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 4)


def test_majority_groups_by_equivalence_and_breaks_ties(tmp_path, serial_pool):
    path = _write(
        tmp_path / "g.jsonl",
        [
            # 0.5 and \frac12 are one (wrong) group of 2 vs the single correct answer: wrong majority
            {"target": "3", "text": [r"\boxed{0.5}", r"\boxed{3}", r"\boxed{\frac12}"]},
            # tie 1-1: first-appearing group wins (the wrong one), reported as a tie with a correct group
            {"target": "3", "text": [r"\boxed{4}", r"\boxed{3}"]},
            # tie, correct first
            {"target": "3", "text": [r"\boxed{3.0}", r"\boxed{4}", "no answer here"]},
            # all no answer
            {"target": "3", "text": ["<think>hmm", "<think>hmm"]},
        ],
    )
    results, fallbacks = grade_problems(read_generated(path).problems, serial_pool)
    assert fallbacks == 0
    votes = [r.majority() for r in results]
    assert [(v.answer, v.correct, v.tie) for v in votes] == [
        ("0.5", False, False),
        ("4", False, True),
        ("3.0", True, True),
        (None, False, False),
    ]
    assert results[0].groups == [0, 1, 0]
    out = MajorityAtK(bootstrap=200)(results)
    assert out["maj@2"] == 0.25  # k = the smallest sample count (2)
    assert out["maj@2_ties"] == 3 and out["maj@2_ties_with_correct"] == 3  # problem 0 ties at k=2
    lo, hi = out["maj@2_ci"]
    assert 0 <= lo <= 0.25 <= hi <= 1
    assert MajorityAtK(k=1, bootstrap=0)(results)["maj@1"] == 0.25
    assert MeanAtK(k=2, bootstrap=0)(results)["mean@2"] == pytest.approx((0.5 + 0.5 + 0.5 + 0) / 4)


def test_reads_full_and_minimal_records(tmp_path):
    path = _write(
        tmp_path / "mixed.jsonl",
        [
            {"text": r"\boxed{1}", "target": "1"},
            {"text": [r"\boxed{1}", r"\boxed{2}"], "target": "2"},
            {
                "id": "p3",
                "problem": "1+1?",
                "target": "2",
                "text": ["a", "b"],
                "samples": [
                    {
                        "text": "a",
                        "model_tokens": 10,
                        "tool_tokens": 3,
                        "tool_calls": 1,
                        "tool_errors": 1,
                        "tool_timeouts": 0,
                        "steps": 2,
                        "finish_reason": "budget",
                    },
                    {
                        "text": "b",
                        "model_tokens": 20,
                        "tool_tokens": 0,
                        "tool_calls": 0,
                        "tool_errors": 0,
                        "tool_timeouts": 0,
                        "steps": 1,
                        "finish_reason": "answer",
                    },
                ],
                "meta": {"model": "m"},
            },
            "{not json",
            {"text": "x"},
            "",
        ],
    )
    read = read_generated(path)
    assert [len(p.samples) for p in read.problems] == [1, 2, 2]
    assert read.problems[2].id == "p3" and read.problems[0].id == "0"
    assert read.problems[2].samples[0].truncated
    assert len(read.malformed) == 2
    assert read.malformed[0].startswith(f"{path}:4:") and read.malformed[1].startswith(f"{path}:5:")
    with pytest.raises(RecordError, match=":4:"):
        read_generated(path, strict=True)
    assert len(read_generated(path, limit=2).problems) == 2


def test_lengths_tool_stats_and_truncation(tmp_path, serial_pool):
    trace = "let me run <tool_call>\nprint(2)\n</tool_call>\n```output\ntwo words\n```\nso \\boxed{2}"
    path = _write(
        tmp_path / "m.jsonl",
        [
            {"target": "2", "text": [trace, "I guess \\boxed{3}"]},
            {
                "target": "2",
                "samples": [
                    {
                        "text": "\\boxed{2}",
                        "model_tokens": 7,
                        "tool_tokens": 0,
                        "tool_calls": 0,
                        "tool_errors": 0,
                        "tool_timeouts": 0,
                        "finish_reason": "max_steps",
                    }
                ],
            },
        ],
    )
    metrics = build_metrics([{"_target_": "deep_math.evaluation.metrics.OutputLength"}])
    run = evaluate_file(path, serial_pool, metrics + [ToolUse(), TruncationRate()], tokenizer=WordTokenizer())
    samples = [s for r in run.results for s in r.samples]
    assert [s.tool_tokens for s in samples] == [4, 0, 0]  # "```output", "two", "words", "```"
    assert samples[0].model_tokens == len(trace.split()) - 4
    assert run.lengths_measured == 2
    v = run.values
    assert v["tool_calls_per_trace"] == pytest.approx(1 / 3)
    assert v["tool_use_share"] == pytest.approx(1 / 3)
    assert v["accuracy_with_tool"] == 1.0 and v["accuracy_without_tool"] == 0.5
    assert v["tool_errors_per_trace"] == 0.0  # only the record that counts them
    assert v["truncation_rate"] == 1.0  # only one sample records a finish reason


def test_tokenizer_from_local_hf_folder(tmp_path):
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]").save_pretrained(
        folder
    )
    path = _write(tmp_path / "t.jsonl", [{"target": "1", "text": "hello world \\boxed{1}"}])
    with GradingPool(workers=0) as pool:
        run = evaluate_file(path, pool, [MajorityAtK(bootstrap=0)], tokenizer=str(folder))
    assert run.results[0].samples[0].model_tokens > 2
    assert run.values["maj@1"] == 1.0


def test_config_schema_rejects_unknown_keys_and_bad_metrics():
    with pytest.raises(ConfigError, match="Valid keys"):
        to_schema({"generated_file": "a.jsonl", "workerz": 2}, EvaluationConfig)
    with pytest.raises(ConfigError, match="generated_file is required"):
        to_schema({}, EvaluationConfig)
    cfg = to_schema({"generated_file": "a.jsonl, b.jsonl"}, EvaluationConfig)
    assert cfg.generated_files == ["a.jsonl", "b.jsonl"]
    with pytest.raises(ConfigError, match="Available"):
        build_metrics([{"_target_": "deep_math.evaluation.metrics.MajorityAtKK"}])
    assert isinstance(
        build_metrics([{"_target_": "deep_math.evaluation.metrics.PassAtK", "ks": [1]}])[0], PassAtK
    )


def test_grading_timeout_scores_wrong_and_is_counted(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"target": "1", "text": [r"\boxed{9^{9^{9^{9}}}}", r"\boxed{1}"]}])
    with GradingPool(workers=1, timeout=2) as pool:
        run = evaluate_file(path, pool, [MajorityAtK(bootstrap=0)], tokenizer=WordTokenizer())
    assert run.results[0].correct == [False, True]
    assert run.grading["timeout"] == 1
    assert run.results[0].grades[0] == Grade(
        r"9^{9^{9^{9}}}", False, "timeout", run.results[0].grades[0].detail
    )
