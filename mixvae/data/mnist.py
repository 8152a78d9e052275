"""Grayscale MNIST (LeCun et al. 1998) from its idx files, in torchvision's layout ``ROOT/MNIST/raw``.

The files are read by our own idx parser (decompressed copy if present, else the ``.gz``), which checks the
magic number and the sizes; torchvision is used only to download them. Intensities are ``uint8 / 255`` and
are binarized dynamically by :meth:`Dataset.batches` (IWAE protocol, Burda et al. 2016, section 5.1).
Validation: the last 10,000 training images, the split of Larochelle & Murray's binarized MNIST.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch

from .core import DatasetSpec, RawSplits, check_digest, data_error, holdout_last, register
from .download import reachable

IMAGES_MAGIC = 0x00000803  # idx: unsigned byte data, 3 dimensions
FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's first mirror
VALID_FRACTION = 10_000 / 60_000
# The published files (torchvision's MD5s of the .gz: f68b3c2d..., 9fb629c4...): (images, SHA-256 of the
# decompressed idx bytes), the same whether the copy read is the .gz or the decompressed file.
CANONICAL = {
    "train-images-idx3-ubyte": (60_000, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "t10k-images-idx3-ubyte": (10_000, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
}


def raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def candidates(root: Path, stem: str) -> list[Path]:
    return [raw_dir(root) / stem, raw_dir(root) / f"{stem}.gz"]


def read_idx_images(path: Path, verify: bool = False) -> np.ndarray:
    """Parse an idx3 uint8 image file (plain or gzipped) into ``[N, 784]`` uint8; DataError on corruption.

    verify: a file named and sized as a canonical one must have its SHA-256 (a well-formed file can still hold
    damaged pixels).
    """
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise data_error("mnist", f"cannot read {path}: {err}", [path], "delete it and download again") from None
    if len(data) < 16:
        raise data_error("mnist", f"{path} is truncated ({len(data)} bytes)", [path], "delete it and download again")
    magic, n, rows, cols = np.frombuffer(data[:16], dtype=">u4").tolist()
    if magic != IMAGES_MAGIC or (rows, cols) != (28, 28) or len(data) != 16 + n * rows * cols:
        raise data_error(
            "mnist",
            f"{path} is not a 28x28 idx3 image file (magic {magic:#010x}, header {n}x{rows}x{cols}, "
            f"{len(data)} bytes)",
            [path], "delete it and download again",
        )
    canonical = CANONICAL.get(path.name.removesuffix(".gz"))
    if verify and canonical is not None and n == canonical[0]:
        check_digest("mnist", path, hashlib.sha256(data).hexdigest(), {canonical[1]}, "sha256 of the idx bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def _missing(root: Path) -> list[Path]:
    return [p for stem in FILES.values() if not any(c.exists() for c in candidates(root, stem))
            for p in candidates(root, stem)]


def _download(root: Path) -> None:
    import torchvision  # only needed online

    for train in (True, False):
        torchvision.datasets.MNIST(str(root), train=train, download=True)


def load(root: Path, download: bool | None, cache_dir: Path | None = None, verify: bool = True) -> RawSplits:
    missing = _missing(root)
    if missing and download is not False and (download or reachable(MIRROR)):
        try:
            _download(root)
        except Exception as err:  # noqa: BLE001 - any failure becomes one DataError line
            raise data_error("mnist", f"download into {raw_dir(root)} failed: {err}", missing) from None
        missing = _missing(root)
    if missing:
        raise data_error("mnist", "missing idx image files", missing,
                         "the files torchvision.datasets.MNIST downloads, in ROOT/MNIST/raw")
    arrays, used = {}, []
    for split, stem in FILES.items():
        path = next(c for c in candidates(root, stem) if c.exists())
        arrays[split] = torch.from_numpy(read_idx_images(path, verify).astype(np.float32) / 255.0)
        used.append(path.name)
    return RawSplits(arrays["train"], arrays["test"], f"mnist: {' + '.join(used)} in {raw_dir(root)}")


def default_valid(n_train: int) -> int:
    return round(n_train * VALID_FRACTION)


SPEC = register(DatasetSpec("mnist", load, dynamic=True, default_valid=default_valid, holdout=holdout_last))

