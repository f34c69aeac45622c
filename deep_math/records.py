"""The record vocabulary shared by the agent, training and evaluation (no torch, no heavy imports).

`TraceStats` owns the per-trace tool counters: the agent's `Trace` inherits them, the rollout turns
them into reward-function columns, inference writes them into each sample of the generated file and
evaluation reads them back. "Used a tool successfully" (the code_use reward) is decided in one place,
`used_tool_successfully`.

The generated file (inference writes it, evaluation reads it) holds one JSON object a line per
problem: its keys are named here (`RECORD_FIELDS`, `SAMPLE_FIELDS`, the key constants) and its
records are built here (`problem_record`, `sample_record`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any


@dataclass(kw_only=True)
class TraceStats:
    """What one agent trace counted. Keyword-only, so a subclass may add positional fields."""

    model_tokens: int = 0
    tool_tokens: int = 0
    tool_calls: int = 0
    tool_errors: int = 0  # snippets that failed, and tool calls with nothing to run
    tool_timeouts: int = 0
    sandbox_errors: int = 0  # snippets that failed inside the sandbox, not in the model's code
    steps: int = 0  # generation calls (a continuation at the per-step cap is one more)

    @property
    def used_tool_successfully(self) -> bool:
        """At least one snippet ran without error, timeout or sandbox failure (the code_use reward).
        A blank or comment-only snippet is not run: the agent counts it in tool_errors."""
        return used_tool_successfully(
            self.tool_calls, self.tool_errors, self.tool_timeouts, self.sandbox_errors
        )

    def stats(self) -> dict[str, int]:
        """The counters alone, in STAT_FIELDS order."""
        return {name: getattr(self, name) for name in STAT_FIELDS}


STAT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TraceStats))


def used_tool_successfully(
    tool_calls: int, tool_errors: int, tool_timeouts: int, sandbox_errors: int
) -> bool:
    """The one definition of a successful tool use, for counters held in columns (rollout, rewards)."""
    return int(tool_calls) - int(tool_errors) - int(tool_timeouts) - int(sandbox_errors) > 0


# The keys of a generated-file record, and of each entry of its `samples`, in the order written.
ID, PROBLEM, TARGET, TEXT, SAMPLES, META = "id", "problem", "target", "text", "samples", "meta"
FINISH_REASON, TOOL_OUTPUT_SPANS, ERROR = "finish_reason", "tool_output_spans", "error"
RECORD_FIELDS: tuple[str, ...] = (ID, PROBLEM, TARGET, TEXT, SAMPLES, META)
SAMPLE_FIELDS: tuple[str, ...] = (TEXT, *STAT_FIELDS, FINISH_REASON, TOOL_OUTPUT_SPANS, ERROR)
# written only when known (the agent located its tool output) / when the trace failed with a message
OPTIONAL_SAMPLE_FIELDS: tuple[str, ...] = (TOOL_OUTPUT_SPANS, ERROR)


def sample_record(
    stats: TraceStats,
    text: str,
    finish_reason: str,
    tool_output_spans: Iterable[Iterable[int]] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One entry of a record's `samples`: the trace's text, its counters, why it ended, and (when
    known) where the agent inserted tool output and (when it failed) the error message."""
    rec: dict[str, Any] = {TEXT: text, **stats.stats(), FINISH_REASON: finish_reason}
    if tool_output_spans is not None:
        rec[TOOL_OUTPUT_SPANS] = [list(span) for span in tool_output_spans]
    if error:
        rec[ERROR] = error
    return rec


def problem_record(
    pid: str, problem: str, target: Any, samples: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """One line of the generated file: a problem, its gold answer and its `sample_record`s. `text`
    repeats the samples' texts for readers of the minimal form: a string when there is one sample,
    else a list."""
    texts = [sample[TEXT] for sample in samples]
    return {
        ID: pid,
        PROBLEM: problem,
        TARGET: target,
        TEXT: texts[0] if len(texts) == 1 else texts,
        SAMPLES: samples,
        META: meta,
    }
