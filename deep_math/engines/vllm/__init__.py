"""The vLLM engine: generation on `AsyncLLM` (engine.py), weight updates (weights.py) and the code
that runs inside vLLM's workers (worker.py). vLLM itself is imported only when an engine is built."""

from deep_math.engines.vllm.engine import VLLM_INSTALL_HINT, VLLMEngine, map_finish_reason, sampled_logprobs
from deep_math.engines.vllm.worker import WORKER_EXTENSION, DeepMathWorkerExtension

__all__ = [
    "VLLM_INSTALL_HINT",
    "WORKER_EXTENSION",
    "DeepMathWorkerExtension",
    "VLLMEngine",
    "map_finish_reason",
    "sampled_logprobs",
]
