"""Tiny versions of all three datasets in their canonical file formats, for tests without the real files.

``write_fixture_root(root, n_train, n_test)`` writes, under ``root``:

* ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` and their ``.gz`` (torchvision's layout);
  ``n_train`` / ``n_test`` grayscale 28x28 "digits" (ten smooth prototypes, jittered).
* ``binarized_mnist/binarized_mnist_{train,valid,test}.amat`` (``.amat.gz`` with ``gzip_amat=True``):
  ``n_train`` / ``n_test`` / ``n_test`` lines of 784 space-separated 0/1 values.
* ``omniglot/images_{background,evaluation}.zip`` with 105x105 1-bit PNGs (white background, black ink) named
  ``images_<set>/<Alphabet>/characterNN/XXXX_YY.png``, 20 drawers per character and ``ceil(n_train / 15)``
  characters, so the drawer split gives ``15 * chars`` train and ``5 * chars`` test images.
* with ``chardata=True`` also ``omniglot/chardata.mat`` in IWAE's layout (which then takes precedence).

Everything is drawn from ``numpy.random.default_rng(seed)``, so a fixture is reproducible.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zipfile
from pathlib import Path

import numpy as np

from .core import X_DIM


def fixture_counts(n_train: int = 120, n_test: int = 40) -> dict[str, dict[str, int]]:
    """Images per file split that :func:`write_fixture_root` writes (before any validation hold-out)."""
    chars = _omniglot_chars(n_train)
    return {
        "mnist": {"train": n_train, "test": n_test},
        "binarized_mnist": {"train": n_train, "valid": n_test, "test": n_test},
        "omniglot": {"train": 15 * chars, "test": 5 * chars},
    }


def _omniglot_chars(n_train: int) -> int:
    return max(2, math.ceil(n_train / 15))


def synthetic_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images ``[n, 28, 28]`` and labels ``[n]``: ten smooth random prototypes, shifted by up
    to 2 pixels, so that a model has some structure to learn."""
    yy, xx = np.mgrid[0:28, 0:28]
    protos = np.zeros((10, 28, 28))
    for k in range(10):
        for cy, cx in rng.uniform(7, 21, size=(4, 2)):
            protos[k] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5**2))
    protos = np.clip(protos / protos.max(axis=(1, 2), keepdims=True) * 1.3, 0, 1)
    labels = rng.integers(0, 10, size=n)
    shifts = rng.integers(-2, 3, size=(n, 2))
    images = np.stack([np.roll(protos[k], tuple(s), axis=(0, 1)) for k, s in zip(labels, shifts, strict=True)])
    images = np.clip(images + rng.normal(0, 0.05, size=images.shape), 0, 1)
    return np.rint(images * 255).astype(np.uint8), labels.astype(np.uint8)


def _idx_bytes(array: np.ndarray) -> bytes:
    """idx format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian uint32 dims, then the data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(root: Path, n_train: int, n_test: int, rng: np.random.Generator) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = synthetic_digits(n, rng)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = _idx_bytes(array)
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(data)
            (raw / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(data, mtime=0))


def amat_text(binary: np.ndarray) -> bytes:
    """``[N, 784]`` 0/1 array -> Larochelle's text format (one image a line, space-separated)."""
    return "".join(" ".join(map(str, row)) + "\n" for row in binary.astype(int)).encode()


def write_binarized_mnist(root: Path, n_train: int, n_test: int, rng: np.random.Generator,
                          gzip_amat: bool = False) -> None:
    folder = root / "binarized_mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_test), ("test", n_test)):
        images, _ = synthetic_digits(n, rng)
        binary = rng.random(images.shape) < images / 255.0  # one fixed Bernoulli draw, as Larochelle's
        text = amat_text(binary.reshape(n, X_DIM))
        name = f"binarized_mnist_{split}.amat"
        if gzip_amat:
            (folder / f"{name}.gz").write_bytes(gzip.compress(text, mtime=0))
        else:
            (folder / name).write_bytes(text)


def _character_strokes(rng: np.random.Generator) -> np.ndarray:
    """2-4 strokes of 3 points each, coordinates in the 105x105 frame: ``[strokes, 3, 2]``."""
    return rng.uniform(20, 85, size=(int(rng.integers(2, 5)), 3, 2))


def _png_1bit(strokes: np.ndarray, rng: np.random.Generator) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("1", (105, 105), 1)  # white background = 1
    draw = ImageDraw.Draw(img)
    for stroke in strokes + rng.normal(0, 2.0, size=strokes.shape):  # each drawer's own jitter
        draw.line([tuple(p) for p in stroke], fill=0, width=4)  # ink = 0
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def write_omniglot_zips(root: Path, n_train: int, rng: np.random.Generator) -> None:
    """Two zips; characters are split between them, two alphabets each, 20 drawers per character."""
    folder = root / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    chars = _omniglot_chars(n_train)
    per_set = {"background": (chars + 1) // 2, "evaluation": chars // 2}
    char_id = 0
    for set_name, n_chars in per_set.items():
        with zipfile.ZipFile(folder / f"images_{set_name}.zip", "w", zipfile.ZIP_STORED) as archive:
            for c in range(n_chars):
                char_id += 1
                alphabet = f"Fixture_{set_name}_{c % 2}"
                strokes = _character_strokes(rng)
                for drawer in range(1, 21):
                    name = f"images_{set_name}/{alphabet}/character{c // 2 + 1:02d}/{char_id:04d}_{drawer:02d}.png"
                    archive.writestr(name, _png_1bit(strokes, rng))


def write_chardata(path: Path, train: np.ndarray, test: np.ndarray) -> None:
    """IWAE's chardata.mat layout: ``data`` / ``testdata`` are ``[784, N]``, each image flattened in
    column-major order (what IWAE's ``reshape(..., order='fortran')`` undoes)."""
    import scipy.io

    def cols(x: np.ndarray) -> np.ndarray:
        return x.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(-1, X_DIM).T.astype(np.float64)

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"data": cols(train), "testdata": cols(test)})


def write_fixture_root(root: str | Path, n_train: int = 120, n_test: int = 40, seed: int = 0,
                       gzip_amat: bool = False, chardata: bool = False) -> Path:
    """Write tiny copies of mnist, binarized_mnist and omniglot under ``root``; returns ``root`` as a Path."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    write_mnist(root, n_train, n_test, rng)
    write_binarized_mnist(root, n_train, n_test, rng, gzip_amat=gzip_amat)
    write_omniglot_zips(root, n_train, rng)
    if chardata:
        counts = fixture_counts(n_train, n_test)["omniglot"]
        train = rng.random((counts["train"], X_DIM))
        test = rng.random((counts["test"], X_DIM))
        write_chardata(root / "omniglot" / "chardata.mat", train, test)
    return root
