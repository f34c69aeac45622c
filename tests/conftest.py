"""Shared fixtures (the embedded tokenizer) and the GPU skip logic, for every folder below.
Helpers that tests import live in `deep_math.testing`."""

from __future__ import annotations

import pytest


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
