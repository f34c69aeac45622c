"""The record of one agent trace: exact token ids, masks and tool statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

TraceFinish = Literal["answer", "eos", "max_steps", "budget", "error"]


@dataclass
class Trace:
    """One sampled solution.

    completion_ids is the concatenation, in order, of the ids the engine generated and the ids of
    the tokenized observations ("```output\\n...\\n```\\n" blocks). env_mask has one entry per
    completion id: 1 for a model token, 0 for an observation token. logprobs has one entry per
    completion id: the engine's logprob on model tokens, 0.0 on observation tokens.
    text is the decoding of completion_ids without a final EOS token (for display and grading;
    never re-encoded). tool_output_spans: the (start, end) character offsets in `text` of each
    observation, where the agent inserted it: grading locates tool output by these rather than
    by parsing the text (`deep_math.evaluation.extract`); None where they are unknown (a trace
    from an older server, a failed trace), which falls back to parsing.
    """

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    text: str = ""
    tool_output_spans: list[tuple[int, int]] | None = None  # None: unknown (parse the text)
    model_tokens: int = 0
    tool_tokens: int = 0
    tool_calls: int = 0
    tool_errors: int = 0  # snippets that failed, and tool calls with nothing to run
    tool_timeouts: int = 0
    sandbox_errors: int = 0  # snippets that failed inside the sandbox, not in the model's code
    steps: int = 0  # generation calls (a continuation at the per-step cap is one more)
    finish_reason: TraceFinish = "eos"
    error: str | None = None

    @property
    def used_tool_successfully(self) -> bool:
        """At least one snippet ran without error, timeout or sandbox failure (the code_use reward).
        A blank or comment-only snippet is not run: the agent counts it in tool_errors."""
        return self.tool_calls - self.tool_errors - self.tool_timeouts - self.sandbox_errors > 0

    def sample_record(self) -> dict:
        """The per-sample dict of the generated-file record (DESIGN.md)."""
        rec = {
            "text": self.text,
            "model_tokens": self.model_tokens,
            "tool_tokens": self.tool_tokens,
            "tool_calls": self.tool_calls,
            "tool_errors": self.tool_errors,
            "tool_timeouts": self.tool_timeouts,
            "sandbox_errors": self.sandbox_errors,
            "steps": self.steps,
            "finish_reason": self.finish_reason,
        }
        if self.tool_output_spans is not None:
            rec["tool_output_spans"] = [list(span) for span in self.tool_output_spans]
        if self.error:
            rec["error"] = self.error
        return rec

    def to_dict(self) -> dict:
        return asdict(self)
