"""metrics.jsonl (one JSON record per logged step) and summary.json, the files results are built from."""

from __future__ import annotations

import errno
import json
import math
import warnings
from pathlib import Path

import torch

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def to_floats(metrics: dict) -> dict[str, float]:
    """0-d tensors -> Python floats (a host sync on GPU: call at logging steps only)."""
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


def _json_safe(value):
    # JSON has no NaN/inf; write them as strings so the file stays valid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsFile:
    """Append-only metrics.jsonl: ``{"step": int, "epoch": int, "<split>/<name>": float, ...}`` per line."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> None:
        """Drop what was logged after the checkpoint being resumed (a killed run may have logged more).

        Only ever shortens the file. A file shorter than ``size`` has lost records from before the checkpoint,
        which no rerun restores: that is warned about, the file is cut back to its last whole record, and the
        run continues after it.
        """
        actual = self.size()
        if actual >= size:
            if self.path.exists():
                with open(self.path, "r+b") as fh:
                    fh.truncate(size)
            return
        kept = actual
        if actual:
            with open(self.path, "r+b") as fh:
                kept = fh.read().rfind(b"\n") + 1
                fh.truncate(kept)
        warnings.warn(f"{self.path} has {actual} bytes but had {size} at the checkpoint being resumed: "
                      f"{size - kept} bytes of its records (from before the checkpoint) are lost"
                      + (", including a partial last record" if kept < actual else "")
                      + "; the run continues after what is left", stacklevel=2)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n")


def os_error_message(e: OSError, path: Path | str | None = None) -> str:
    """One line for a run file that cannot be written: which file, why, and what to do."""
    where = e.filename or path or "a run file"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device writing {where}; free some space and rerun the same command "
                "(it continues from the last checkpoint)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write {where} ({e.strerror}); make the run directory writable, or choose another with "
                "hydra.run.dir=DIR, and rerun")
    return f"cannot write {where}: {e.strerror or e}"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_summary(run_dir: Path, summary: dict) -> None:
    path = Path(run_dir) / SUMMARY
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None
