"""The paper's module path for the agent server's client: see `deep_math.serving.client`."""

from deep_math.serving.client import *  # noqa: F403
from deep_math.serving.client import AgentVLLMClient, HandshakeError, ServerError  # noqa: F401
