"""Settings of the agent loop (shared by inference, training rollouts and the agent server)."""

from __future__ import annotations

from dataclasses import dataclass, fields

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"


@dataclass
class AgentConfig:
    """max_steps: most tool rounds per trace. max_agent_output: most generated tokens per trace,
    model and observation tokens together, across all steps (each step's max_tokens is the
    remainder). max_concurrency: traces in flight at once in the runner.
    sandbox_timeout: seconds per snippet (hard kill). max_output_chars: observation cap.
    allow_degraded_network: run snippets even on a host where the sandbox cannot block the
    network (no network namespace, seccomp or Landlock: some unprivileged containers), with a
    warning; off by default, so such a host is refused at start."""

    max_steps: int = 50
    max_agent_output: int = 5000
    max_concurrency: int = 64
    sandbox_timeout: float = 20.0
    sandbox_memory_mb: int = 2048
    max_output_chars: int = 2000
    allow_degraded_network: bool = False

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_agent_output < 1:
            raise ValueError(f"max_agent_output must be >= 1, got {self.max_agent_output}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")


def flat_agent_keys(prefix: str = "") -> dict[str, str]:
    """{prefix + field: "agent." + field} for every AgentConfig field: the flat spellings the paper's
    commands use (`+model.max_steps=50`, `--max_steps 50`), mapped onto the nested `agent` block."""
    return {f"{prefix}{f.name}": f"agent.{f.name}" for f in fields(AgentConfig)}
