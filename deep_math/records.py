"""The record vocabulary shared by the agent, training and evaluation (no torch, no heavy imports).

`TraceStats` owns the per-trace tool counters: the agent's `Trace` inherits them, the rollout turns
them into reward-function columns, inference writes them into each sample of the generated file and
evaluation reads them back. "Used a tool successfully" (the code_use reward) is decided in one place,
`used_tool_successfully`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


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
