"""Former home of the vLLM engine, kept so existing imports work: see `deep_math.engines.vllm`."""

from deep_math.engines.vllm import *  # noqa: F403
from deep_math.engines.vllm import __all__  # noqa: F401
