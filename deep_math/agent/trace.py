"""The record of one agent trace: exact token ids, masks and tool statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from deep_math.records import TraceStats, sample_record

TraceFinish = Literal["answer", "eos", "max_steps", "budget", "error"]


@dataclass
class Trace(TraceStats):
    """One sampled solution.

    completion_ids is the concatenation, in order, of the ids the engine generated and the ids of
    the tokenized observations ("```output\\n...\\n```\\n" blocks). env_mask has one entry per
    completion id: 1 for a model token, 0 for an observation token. logprobs has one entry per
    completion id: the engine's logprob on model tokens, 0.0 on observation tokens.
    text is the decoding of completion_ids without a final EOS token (for display and grading;
    never re-encoded). The tool counters (model_tokens ... steps) and `used_tool_successfully` come
    from `TraceStats` (keyword-only). tool_output_spans: the (start, end) character offsets in `text` of each
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
    finish_reason: TraceFinish = "eos"
    error: str | None = None

    def sample_record(self) -> dict:
        """The per-sample dict of the generated-file record (`deep_math.records.sample_record`)."""
        return sample_record(self, self.text, self.finish_reason, self.tool_output_spans, self.error)

    def to_dict(self) -> dict:
        return asdict(self)
