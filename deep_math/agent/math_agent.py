"""MathAgent: the DeepMath inline tool-call loop on top of smolagents' CodeAgent.

One agent solves one trace. Semantics (the paper's format):
- A step is the model's text up to `</tool_call>` (kept), EOS, or the trace's token budget,
  generated inside its own assistant turn. A step may take several generation calls: a call that
  stops at the per-step cap (`max_new_tokens`) while the trace's budget has room is continued in
  the same turn, token-exact (the next call's prompt is the previous prompt plus every id
  generated so far). Such a continuation is part of the same step: it is not a tool round and
  does not count against `max_steps`. `Trace.steps` counts generation calls, continuations
  included.
- The code between `<tool_call>` and `</tool_call>` runs in the trace's sandbox session; the
  result is appended as "```output\\n...\\n```" tokens and generation continues in the same turn
  (no new chat turn, no "Observation:" prefix).
- A step whose text (outside its tool call) holds a complete `\\boxed{...}` ends the trace
  ("answer"); a step cut by the trace's budget is "budget" even after a drafted box.
- `max_steps` caps tool rounds: after `max_steps` executed snippets the model gets one more
  step; a tool call there is not executed and the trace ends with "max_steps".
- `max_agent_output` caps the trace's generated tokens, model and observation tokens together:
  each generation call's max_tokens is min(remaining budget, `max_new_tokens`); an observation
  that does not fit is cut to the remainder and the trace ends with "budget".
- Token ids are kept exactly: completion_ids = model ids + tokenized observations, env_mask
  1/0, logprobs from the engine and 0.0 on observation tokens.
"""

from __future__ import annotations

import ast
import itertools
import logging
from functools import lru_cache
from typing import Any

import yaml
from smolagents import CodeAgent
from smolagents.agents import ActionOutput
from smolagents.monitoring import LogLevel

from deep_math.agent.config import TOOL_CLOSE, TOOL_OPEN, AgentConfig
from deep_math.agent.executor import SandboxExecutor, format_observation
from deep_math.agent.model import EngineModel
from deep_math.agent.trace import Trace
from deep_math.evaluation.extract import fold_output, last_boxed_span, model_text_mask

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _prompt_templates() -> dict:
    # smolagents requires its template keys; DeepMath builds prompts itself (deep_math/prompts.py),
    # so load smolagents' own templates once instead of re-reading the YAML for every trace.
    import importlib.resources

    text = importlib.resources.files("smolagents.prompts").joinpath("code_agent.yaml").read_text()
    return yaml.safe_load(text)


def split_tool_call(step_text: str) -> tuple[str, str | None]:
    """(text before the `<tool_call>` that the step's `</tool_call>` closes, the code between
    them); code is None when the step has no opening tag.

    The step ends at its first `</tool_call>`. The token that completed the tag may carry more
    characters (`>.`, `>\\n\\n`): they stay in the step's ids and text, but are not code."""
    end = step_text.find(TOOL_CLOSE)
    body = step_text[:end] if end >= 0 else step_text
    start = body.rfind(TOOL_OPEN)
    if start < 0:
        return body, None
    return body[:start], body[start + len(TOOL_OPEN) :].strip("\n")


def has_answer(text: str) -> bool:
    """Whether the model's own `text` holds a complete answer box: `\\boxed{...}` with its braces
    closed (or `\\boxed 5`), outside `<tool_call>` code (closed or not) and fenced tool output."""
    found = last_boxed_span(model_text_mask(text))
    return found is not None and bool(found[0])


def has_statements(code: str) -> bool:
    """Whether `code` holds at least one statement (False for blank or comment-only code). Code
    that does not parse counts as having statements: running it reports the SyntaxError."""
    try:
        return bool(ast.parse(code).body)
    except (SyntaxError, ValueError):
        return True


class MathAgent(CodeAgent):
    """A CodeAgent whose model is a DeepMath engine and whose executor is a sandbox session.

    Use `solve(prompt_ids) -> Trace`; it never raises: an engine or sandbox failure ends the
    trace with finish_reason "error" and the message in `Trace.error`.
    """

    def __init__(
        self,
        model: EngineModel,
        session: Any,
        config: AgentConfig,
        max_new_tokens: int | None = None,
    ):
        super().__init__(
            tools=[],
            model=model,
            prompt_templates=_prompt_templates(),
            executor=SandboxExecutor(session),
            code_block_tags=(TOOL_OPEN, TOOL_CLOSE),
            max_steps=config.max_steps + 1,
            verbosity_level=LogLevel.OFF,
        )
        self.config = config
        self.max_new_tokens = max_new_tokens or config.max_agent_output
        self.tokenizer = model.engine.tokenizer
        self.trace: Trace | None = None
        self._ended_on_eos = False  # the last generation call stopped on an EOS id (kept last)

    # --- public API -------------------------------------------------------------------------
    def solve(self, prompt_ids: list[int], task: str = "") -> Trace:
        self.trace = Trace(prompt_ids=list(prompt_ids))
        self._ended_on_eos = False
        self._observations: list[tuple[int, int]] = []  # token index ranges of the observations
        try:
            self.run(task or "DeepMath trace", max_steps=self.config.max_steps + 1)
        except Exception as exc:  # noqa: BLE001 - any failure becomes this trace's typed error
            log.warning("Trace failed: %s: %s", type(exc).__name__, exc)
            self.trace.finish_reason = "error"
            self.trace.error = f"{type(exc).__name__}: {exc}"
        ids = self.trace.completion_ids
        if self._ended_on_eos:
            # As engines do: the EOS id stays in completion_ids, not in the text. Whichever EOS id
            # the engine stopped on (Qwen3 stops on <|im_end|> and <|endoftext|>).
            ids = ids[:-1]
        self.trace.text, self.trace.tool_output_spans = self._text_and_spans(ids)
        return self.trace

    def _text_and_spans(self, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
        """The decoding of `ids` and the character spans of the observations in it (where the
        agent inserted them: what evaluation and rewards must not read as the model's words)."""

        def decode(part: list[int]) -> str:
            return self.tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

        text = decode(ids)
        bounds = sorted({0, len(ids)} | {min(k, len(ids)) for span in self._observations for k in span})
        pieces = [decode(ids[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
        if "".join(pieces) == text:  # segments decode independently (the usual case): one pass
            offsets = dict(zip(bounds, [0, *itertools.accumulate(len(p) for p in pieces)], strict=True))
        else:  # a character split across a boundary: measure each prefix
            offsets = {k: len(decode(ids[:k])) for k in bounds}
        spans = [(offsets[min(a, len(ids))], offsets[min(b, len(ids))]) for a, b in self._observations]
        return text, spans

    # --- smolagents hooks -------------------------------------------------------------------
    def _step_stream(self, memory_step):
        trace = self.trace
        if self.config.max_agent_output - len(trace.completion_ids) <= 0:
            trace.finish_reason = "budget"
            yield ActionOutput(output=None, is_final_answer=True)
            return
        step_ids, finish = self._generate_step()
        text = self.tokenizer.decode(step_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        memory_step.model_output = text

        before_call, code = split_tool_call(text) if finish == "stop" else (text, None)
        if finish == "length":  # cut by the trace's budget: truncated, even after a drafted box
            trace.finish_reason = "budget"
        elif has_answer(before_call):
            trace.finish_reason = "answer"
        elif finish == "eos":
            trace.finish_reason = "eos"
        elif trace.tool_calls >= self.config.max_steps:
            trace.finish_reason = "max_steps"
        else:
            self._execute(code, memory_step)
            yield ActionOutput(output=None, is_final_answer=trace.finish_reason == "budget")
            return
        yield ActionOutput(output=None, is_final_answer=True)

    def _generate_step(self) -> tuple[list[int], str]:
        """Generate one step (see the module docstring): the step's model ids and how it ended,
        "stop" (at `</tool_call>`), "eos", "length" (the trace's budget ran out) or "answer" (at
        the per-step cap, with a complete box in the step: the trace ends there, not continued)."""
        trace = self.trace
        step_ids: list[int] = []
        while True:
            remaining = self.config.max_agent_output - len(trace.completion_ids)  # > 0 here
            max_tokens = min(remaining, self.max_new_tokens)
            result = self.model.generate_ids(
                trace.prompt_ids + trace.completion_ids,
                max_tokens=max_tokens,
                stop=[TOOL_CLOSE],
                step=trace.steps,
            )
            trace.steps += 1
            self._append(result.token_ids, result.logprobs, model=True)
            step_ids += result.token_ids
            if result.finish_reason != "length" or not result.token_ids:
                self._ended_on_eos = result.finish_reason == "eos" and bool(result.token_ids)
                return step_ids, result.finish_reason
            if len(trace.completion_ids) >= self.config.max_agent_output:
                return step_ids, "length"
            # Stopped at the per-step cap (max_tokens < remaining): continue unless answered.
            text = self.tokenizer.decode(
                step_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            if has_answer(text):
                return step_ids, "answer"

    def _handle_max_steps_reached(self, task: str) -> Any:
        # smolagents would ask the model for a final answer in a new chat turn; DeepMath ends.
        self.trace.finish_reason = "max_steps"
        return None

    # --- helpers ----------------------------------------------------------------------------
    def _execute(self, code: str | None, memory_step) -> None:
        trace = self.trace
        trace.tool_calls += 1
        if code is None:
            observation = fold_output(f"Error: {TOOL_CLOSE} without an opening {TOOL_OPEN}.")
            trace.tool_errors += 1
        elif not has_statements(code):
            # Nothing would run: not a use of the tool (code_use counts snippets that ran).
            observation = fold_output(
                "Error: the tool call holds no code to run (only comments or blank lines)."
            )
            trace.tool_errors += 1
        else:
            memory_step.code_action = code
            self.python_executor(code)
            result = self.python_executor.last_result
            if result.timed_out:
                trace.tool_timeouts += 1
            elif getattr(result, "sandbox_error", None) is not None:
                trace.sandbox_errors += 1  # the sandbox failed, not the model's code
            elif result.error:
                trace.tool_errors += 1
            if getattr(result, "replay_error", None):
                log.warning("Sandbox session replay failed: %s", result.replay_error)
            observation = format_observation(result)
        memory_step.observations = observation
        obs_ids = self.tokenizer.encode(observation, add_special_tokens=False)
        remaining = self.config.max_agent_output - len(trace.completion_ids)
        if len(obs_ids) >= remaining:
            obs_ids = obs_ids[:remaining]
            trace.finish_reason = "budget"
        start = len(trace.completion_ids)
        self._append(obs_ids, [0.0] * len(obs_ids), model=False)
        self._observations.append((start, len(trace.completion_ids)))

    def _append(self, ids: list[int], logprobs: list[float], model: bool) -> None:
        trace = self.trace
        trace.completion_ids.extend(ids)
        trace.logprobs.extend(logprobs)
        trace.env_mask.extend([1 if model else 0] * len(ids))
        if model:
            trace.model_tokens += len(ids)
        else:
            trace.tool_tokens += len(ids)
