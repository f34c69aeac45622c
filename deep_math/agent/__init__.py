"""The DeepMath agent: inline `<tool_call>` loop (MathAgent) and the concurrent runner."""

from deep_math.agent.config import TOOL_CLOSE, TOOL_OPEN, AgentConfig
from deep_math.agent.trace import Trace

__all__ = ["AgentConfig", "AgentRunner", "MathAgent", "TOOL_CLOSE", "TOOL_OPEN", "Trace"]


def __getattr__(name: str):
    # Lazy: importing the runner pulls smolagents, which entry points that only need the record
    # types (evaluation) should not pay for.
    if name == "AgentRunner":
        from deep_math.agent.runner import AgentRunner

        return AgentRunner
    if name == "MathAgent":
        from deep_math.agent.math_agent import MathAgent

        return MathAgent
    raise AttributeError(name)
