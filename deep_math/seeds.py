"""One way to derive seeds: every seeded stream (a trace's sampling, each generation call of a
trace, a trace's sandbox session, a rollout's traces at each optimizer step) is named by a path
under its base seed and hashed.

Arithmetic such as `seed + 1_000_003 * step + i` lets two paths meet (optimizer step 1's first
call and step 0's second call drew the same stream); a hash of the whole path does not, short of
a 64-bit collision.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63  # torch generators and vLLM take any non-negative int below 2**64


def derive_seed(base: int, *path: int | str) -> int:
    """The seed of the stream named `path` under `base`, in [0, 2**63). Deterministic across
    processes and Python versions (no `hash()`); distinct paths give independent seeds."""
    key = ":".join([str(int(base)), *(f"{type(p).__name__}={p}" for p in path)])
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)
