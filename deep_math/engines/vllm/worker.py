"""Code that runs inside vLLM's worker processes.

`AsyncLLM(worker_extension_cls=WORKER_EXTENSION)` mixes `DeepMathWorkerExtension` into every
worker; `collective_rpc(name, kwargs=...)` runs its methods on each one. vLLM offers no call that
takes tensors from the caller, so the HTTP/CPU weight path ships safetensors bytes (they pass
vLLM's msgpack IPC as they are; `deep_math.engines.weights.safetensors_chunks` makes them) and
feeds them to the model's own `load_weights` (HF checkpoint names; vLLM fuses and shards them).
"""

from __future__ import annotations

WORKER_EXTENSION = "deep_math.engines.vllm.worker.DeepMathWorkerExtension"


class DeepMathWorkerExtension:
    """Mixed into each vLLM worker; `self.model_runner.model` is the worker's model (GPU and CPU
    workers alike)."""

    def deep_math_load_safetensors(self, payload: bytes) -> int:
        """Load one safetensors payload (HF checkpoint names) with the model's `load_weights`;
        returns how many tensors it held."""
        from safetensors.torch import load

        tensors = load(payload)
        self.model_runner.model.load_weights(weights=list(tensors.items()))  # type: ignore[attr-defined]
        return len(tensors)

    def deep_math_weights_hash(self) -> str:
        """sha256 over this worker's parameters: vLLM's fused, per-rank layout, so it says whether
        the served weights changed, not what they equal."""
        from deep_math.engines.weights import tensors_hash

        return tensors_hash(self.model_runner.model.named_parameters())  # type: ignore[attr-defined]
