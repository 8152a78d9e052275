"""Checkpoints in the run directory, written atomically so that a kill never leaves a torn file.

checkpoint.pt: everything needed to continue exactly (model, estimator, optimizer, counters, every RNG state,
    the size of metrics.jsonl at that moment); rewritten every ``checkpoint.every`` epochs and at the end.
best.pt: model and estimator weights at the best validation ELBO (the test metrics are computed with them).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, then os.replace: the old file stays intact until the new one is whole."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path, device: torch.device) -> dict:
    # weights_only=False: the file holds Python/NumPy RNG states, and it is this run's own output.
    return torch.load(path, map_location=device, weights_only=False)
