"""Checkpoints in the run directory, written atomically so that a kill never leaves a torn file.

checkpoint.pt: everything needed to continue exactly (model, estimator, optimizer, lr scheduler, counters, every
    RNG state, the size of metrics.jsonl at that moment, the config); rewritten every ``checkpoint.every``
    epochs and at the end. The one it replaces is kept as checkpoint.prev.pt, the fallback when the newest
    cannot be read.
best.pt: model and estimator weights at the best validation ELBO (the test metrics are computed with them).

A checkpoint is serialized in memory and written with plain file writes, so a full disk raises ENOSPC (torch's
own writer reports only "file write failed"); the partial file is then removed and the previous one kept.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import torch

from mixvae.training.errors import CheckpointError

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
BEST = "best.pt"
CONTENTS = ("model", "estimator", "optimizer", "state", "rng", "metrics_size", "config")  # "scheduler" is newer
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def save_atomic(obj: dict, path: Path, keep_previous: bool = False) -> None:
    """Write ``obj`` to a temporary file, then os.replace: the old file stays intact until the new one is whole.

    keep_previous: move the file being replaced to checkpoint.prev.pt first (a kill between the two renames
    leaves the previous checkpoint, which resuming falls back to).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = f"the previous {path} is kept" if path.exists() else f"no {path.name} was written yet"
        if e.errno in _NO_SPACE:
            raise CheckpointError(f"no space left on the device for {path} ({len(buffer.getbuffer())} bytes): "
                                  f"the partial file was removed and {kept}; free some space and rerun the same "
                                  "command to continue") from e
        raise CheckpointError(f"cannot write {tmp}: {e.strerror or e}; {kept}") from e
    if keep_previous and path.exists():
        os.replace(path, path.with_name(PREVIOUS))
    os.replace(tmp, path)


def load(path: Path, device: torch.device, needs: tuple[str, ...] = ()) -> dict:
    """torch.load, with an unreadable file (truncated, corrupt, not a checkpoint) as one CheckpointError line."""
    try:
        # weights_only=False: the file holds Python/NumPy RNG states, and it is this run's own output.
        saved = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch reports a torn zip as RuntimeError, garbage as pickle errors
        detail = str(e).splitlines()[0].strip() if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is damaged ({detail}); rerun with resume=false to start over") from e
    missing = [k for k in needs if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise CheckpointError(f"{path} is damaged (no {', '.join(missing)}); rerun with resume=false to start "
                              "over")
    return saved
