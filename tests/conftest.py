"""Shared fixtures: the embedded tokenizer, the shared benchmark data, GPU skip logic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """../shared/data next to the repo (or $DEEP_MATH_SHARED_DATA); None when absent."""
    env = os.environ.get("DEEP_MATH_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def tokenizer():
    from deep_math.models import load_tokenizer

    return load_tokenizer(None)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a torch that fails to import means no GPU to test on
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not any keyword (a param id "gpu")
            item.add_marker(skip)
