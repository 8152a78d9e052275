"""Statically binarized MNIST (Larochelle & Murray 2011): ``ROOT/binarized_mnist/binarized_mnist_<split>.amat``.

The canonical text format: one image a line, 784 space-separated 0/1 values; 50,000 / 10,000 / 10,000 images.
A file may be plain ``.amat`` (as the canonical source serves it) or gzipped ``.amat.gz``. The binarization is
fixed, so batches are served as stored (``dynamic=False``) and the published valid file is the validation set.

Verification (``verify``) digests the images, not the bytes: the SHA-256 of the rows packed to bits and sorted,
so that a copy in another text spelling, compression or image order (a mirror stores the test split ordered by
digit) passes, and a changed pixel does not. The digests are those of the copy the project checks against.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from pathlib import Path

import numpy as np
import torch

from .core import X_DIM, DatasetSpec, RawSplits, check_digest, data_error, register
from .download import fetch, reachable

SPLIT_NAMES = ("train", "valid", "test")
URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
CANONICAL = {  # split: (images, image_digest)
    "train": (50_000, "aae6de292e6b68d898acf52062a1ac62907fc7ab417c59582d6523a1da0f9a61"),
    "valid": (10_000, "d10b4edf2e0765693846b51a5895f81f69fa37b6459b7f665bfa9c8cc9723622"),
    "test": (10_000, "87ff96664646cc41575aeb3ae4fbbabc1475ca3d42be4659d7a829d9f22c845a"),
}


def folder(root: Path) -> Path:
    return root / "binarized_mnist"


def candidates(root: Path, split: str) -> list[Path]:
    stem = folder(root) / f"binarized_mnist_{split}.amat"
    return [stem, stem.with_name(stem.name + ".gz")]


def parse_amat(text: bytes, path: Path) -> np.ndarray:
    """Parse amat text into ``[N, 784]`` uint8 of 0/1; DataError unless every line has 784 binary values.

    The common case (single-character tokens '0'/'1') is parsed with vectorized byte operations, 78 MB in
    well under a second, where ``numpy.loadtxt`` takes tens of seconds; other spellings ("1.0") fall back
    to ``numpy.loadtxt``.
    """
    buf = np.frombuffer(text, dtype=np.uint8)
    token = (buf != ord(" ")) & (buf != ord("\n")) & (buf != ord("\r")) & (buf != ord("\t"))
    digits = buf[token]
    single_char = not np.any(token[1:] & token[:-1])
    if single_char and np.all((digits == ord("0")) | (digits == ord("1"))):
        starts = np.concatenate([[0], np.flatnonzero(buf == ord("\n")) + 1])
        starts = starts[starts < buf.size]
        per_line = np.add.reduceat(token.view(np.uint8), starts, dtype=np.int32) if starts.size else starts
        per_line = per_line[per_line > 0]  # blank lines (e.g. a trailing newline) hold no image
        if per_line.size == 0 or np.any(per_line != X_DIM):
            bad = sorted(set(per_line.tolist()) - {X_DIM}) or [0]
            raise data_error("binarized_mnist", f"{path} has lines with {bad[0]} values, expected {X_DIM}",
                             [path], "delete it and download again")
        return (digits - ord("0")).reshape(-1, X_DIM)
    try:
        values = np.loadtxt(io.BytesIO(text), ndmin=2)
    except ValueError as err:
        raise data_error("binarized_mnist", f"{path} is not numeric text: {err}", [path],
                         "delete it and download again") from None
    if values.shape[1] != X_DIM or not np.all((values == 0) | (values == 1)):
        raise data_error("binarized_mnist", f"{path} is not {X_DIM} binary values a line (shape {values.shape})",
                         [path], "delete it and download again")
    return values.astype(np.uint8)


def image_digest(images: np.ndarray) -> str:
    """SHA-256 of ``[N, 784]`` 0/1 images packed to bits, rows sorted: independent of spelling and order."""
    packed = np.ascontiguousarray(np.packbits(images.astype(np.uint8), axis=1))  # [N, 98]
    rows = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    return hashlib.sha256(np.sort(rows).tobytes()).hexdigest()


def read_amat(path: Path) -> np.ndarray:
    try:
        text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise data_error("binarized_mnist", f"cannot read {path}: {err}", [path],
                         "delete it and download again") from None
    return parse_amat(text, path)


def _missing(root: Path) -> list[Path]:
    return [p for s in SPLIT_NAMES if not any(c.exists() for c in candidates(root, s)) for p in candidates(root, s)]


def load(root: Path, download: bool | None, cache_dir: Path | None = None, verify: bool = True) -> RawSplits:
    missing = _missing(root)
    if missing and download is not False and (download or reachable(URL)):
        for split in SPLIT_NAMES:
            if not any(c.exists() for c in candidates(root, split)):
                try:
                    fetch(URL.format(split=split), candidates(root, split)[0])
                except Exception as err:  # noqa: BLE001 - any failure becomes one DataError line
                    raise data_error("binarized_mnist", f"download of {URL.format(split=split)} failed: {err}",
                                     missing) from None
        missing = _missing(root)
    if missing:
        raise data_error("binarized_mnist", "missing amat files", missing,
                         f"the canonical files are {URL.format(split='{train,valid,test}')}")
    arrays, used = {}, []
    for split in SPLIT_NAMES:
        path = next(c for c in candidates(root, split) if c.exists())
        images = read_amat(path)
        n, digest = CANONICAL[split]
        if verify and len(images) == n:
            check_digest("binarized_mnist", path, image_digest(images), {digest}, "image digest")
        arrays[split] = torch.from_numpy(images.astype(np.float32))
        used.append(path.name)
    source = f"binarized_mnist: {' + '.join(used)} in {folder(root)}"
    return RawSplits(arrays["train"], arrays["test"], source, valid=arrays["valid"])


SPEC = register(DatasetSpec("binarized_mnist", load, dynamic=False))
