"""Code that runs inside vLLM's worker processes.

`AsyncLLM(worker_extension_cls=WORKER_EXTENSION)` mixes `DeepMathWorkerExtension` into every
worker; `collective_rpc(name, kwargs=...)` runs its methods on each one. vLLM offers no call that
takes tensors from the caller, so the HTTP/CPU weight path ships safetensors bytes (they pass
vLLM's msgpack IPC as they are; `deep_math.engines.weights.safetensors_chunks` makes them) and
feeds them to the model's own `load_weights` (HF checkpoint names; vLLM fuses and shards them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
        """sha256 over what this worker serves: vLLM's fused, per-rank layout, so it says whether
        the served weights changed, not what they equal.

        vLLM's CPU backend prepacks linear weights for oneDNN / its GEMM kernels and then replaces
        `weight` with an empty tensor (`dispatch_cpu_unquantized_gemm(remove_weight=True)`): those
        layers are fingerprinted by what they compute, their output on a fixed probe input, which
        changes whenever the packed weights do."""
        from deep_math.engines.weights import tensors_hash

        return tensors_hash(served_tensors(self.model_runner.model))  # type: ignore[attr-defined]


def served_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """(name, tensor) for every parameter that holds weights, plus, for each linear layer whose
    weights live only in a prepacked kernel (CPU), that kernel's output on a seeded probe."""
    import torch

    for name, param in model.named_parameters():
        if param.numel():
            yield name, param
    with torch.no_grad():
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            packed = getattr(module, "cpu_linear", None)
            if packed is None or weight is None or weight.numel():
                continue
            generator = torch.Generator().manual_seed(0)
            probe = torch.randn(2, module.input_size_per_partition, generator=generator).to(weight.dtype)
            yield f"{name}.served", packed(probe, weight, None)
