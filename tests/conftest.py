"""Shared test set-up.

The Graves backward pass runs on its default backend ("auto": the C kernel on CPU), as users run it;
``tests/test_graves_backends.py`` holds every backend to the per-dimension reference. torch.compile is only used
where a test asks for it (it spends seconds per new shape). W&B never goes online from a test.
"""

import os

os.environ.setdefault("MIXVAE_GRAVES_BACKEND", "auto")
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
