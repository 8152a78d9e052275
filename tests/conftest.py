"""Shared test set-up.

The Graves backward pass defaults to the eager PyTorch backend in tests: torch.compile spends seconds per new
shape, and the tests use many shapes. ``tests/test_graves_backends.py`` checks the compiled backend against the
reference explicitly. W&B never goes online from a test.
"""

import os

os.environ.setdefault("MIXVAE_GRAVES_BACKEND", "eager")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
