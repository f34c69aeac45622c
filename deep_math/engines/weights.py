"""Named tensors on their way from a trainer to an engine: names, chunks, hashes.

One place for what the trainer's client (HTTP), the agent server and vLLM's workers (collective
RPC) all do to a policy's weights: strip wrapper prefixes from names, cut the tensors into
size-bounded chunks of CPU copies, and hash a state dict to tell whether weights changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

NAME_PREFIXES = ("module.", "base_model.model.")  # DeepSpeed/DDP wrapper, peft model
HTTP_CHUNK_BYTES = 256 * 1024 * 1024  # tensors per /update_weights_http request (client -> server)
RPC_CHUNK_BYTES = 1 << 30  # tensors per collective_rpc payload (server -> vLLM workers; msgpack limit 4 GiB)


def strip_prefixes(name: str) -> str:
    for prefix in NAME_PREFIXES:
        name = name.removeprefix(prefix)
    return name


def tensor_chunks(named: Iterable[tuple[str, Any]], chunk_bytes: int) -> Iterator[dict[str, Any]]:
    """`named` as dicts of about `chunk_bytes` each: CPU copies with their own memory (so tied
    weights and live views serialize safely), names without wrapper prefixes."""
    chunk: dict[str, Any] = {}
    size = 0
    for name, tensor in named:
        cpu = tensor.detach().to("cpu", copy=True).contiguous()
        chunk[strip_prefixes(name)] = cpu
        size += cpu.numel() * cpu.element_size()
        if size >= chunk_bytes:
            yield chunk
            chunk, size = {}, 0
    if chunk:
        yield chunk


def safetensors_chunks(named_tensors: dict[str, Any], chunk_bytes: int = RPC_CHUNK_BYTES) -> Iterator[bytes]:
    """`named_tensors` as safetensors payloads (see `tensor_chunks`)."""
    from safetensors.torch import save

    for chunk in tensor_chunks(named_tensors.items(), chunk_bytes):
        yield save(chunk)


def tensors_hash(named: Iterable[tuple[str, Any]]) -> str:
    """sha256 over names and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_dict_hash(model: Any) -> str:
    """sha256 over the names and bytes of `model.state_dict()` (sorted by name)."""
    return tensors_hash(model.state_dict().items())
