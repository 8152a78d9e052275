"""Omniglot (Lake et al. 2015) at 28x28, from one of two sources, in this order:

1. ``chardata.mat``, the 28x28 Omniglot of the IWAE paper (Burda et al. 2016; 24,345 train / 8,070 test),
   looked up as ``ROOT/omniglot/chardata.mat``, ``ROOT/OMNIGLOT/chardata.mat`` or ``ROOT/chardata.mat``.
   Read as IWAE's ``load_omniglot`` does: keys ``data`` / ``testdata`` hold ``[784, N]`` images flattened in
   column-major order.
2. The original 105x105 sets ``images_background.zip`` + ``images_evaluation.zip`` (torchvision's names) in
   ``ROOT/omniglot/`` (or ``ROOT/omniglot-py/``, where torchvision downloads them). Each 1-bit PNG (white
   background = 1, ink = 0) is inverted to ink = 1, downsampled 105 -> 28 by exact area averaging (each output
   pixel is the mean of the 3.75 x 3.75 input square it covers, :func:`area_matrix`), and quantized to
   1/255 steps like MNIST. Split by drawer: drawers 1-15 of all 1,623 characters train (24,345 images),
   drawers 16-20 test (8,115). The result is cached as ``omniglot28_area_<hash>.npz`` keyed by the zips'
   SHA-256, so changed zips rebuild it.

Numbers on source 2 are close to, but not directly comparable with, IWAE's table (different downsampling and
test split). With ``verify``, zips with the canonical number of images must be byte-identical to the originals
(torchvision's MD5s) or to the pixel-identical copy the project checks against (its SHA-256s); chardata.mat is not
checked (no published digest). ``Dataset.source`` names the source a run used. Both are grayscale and binarized dynamically, as
IWAE does for Omniglot. Validation: a seeded random 1,345 of the training images (the split of Tomczak &
Welling's VampPrior, 23,000 / 1,345), scaled to the training-set size for smaller files.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from .core import X_DIM, DatasetSpec, RawSplits, check_digest, data_error, holdout_random, register
from .download import fetch, reachable, user_cache_dir, writable_dir

ZIP_NAMES = ("images_background.zip", "images_evaluation.zip")
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}"  # torchvision's source
IWAE_CHARDATA_URL = "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat"
TRAIN_DRAWERS = tuple(range(1, 16))  # drawers 1-15 train, 16-20 test
SIZE_IN, SIZE_OUT = 105, 28
CACHE_VERSION = "area-v1"  # bump when the resize or split changes, so old caches are not reused
VALID_FRACTION = 1345 / 24345
CANONICAL = {  # zip: (images, {digest: "md5"/"sha256"})
    "images_background.zip": (19_280, {"68d2efa1b9178cc56df9314c21c6e718": "md5",
                                       "870b8047a1aa2c8cb3c8e160a8ae2bb1ce86cea3d60da28501749b56b1420f1a": "sha256"}),
    "images_evaluation.zip": (13_180, {"6b91aef0f799c5bb55b94e3f2daec811": "md5",
                                       "83fcdebe66f6e111af5179f913e6349aa15c0554ccce06fb86ba002c183f5bdb": "sha256"}),
}
PNG_NAME = re.compile(r"images_(background|evaluation)/([^/]+)/character(\d+)/(\d+)_(\d+)\.png$")


def chardata_candidates(root: Path) -> list[Path]:
    return [root / "omniglot" / "chardata.mat", root / "OMNIGLOT" / "chardata.mat", root / "chardata.mat"]


def zip_dirs(root: Path) -> list[Path]:
    return [root / "omniglot", root / "omniglot-py"]


def area_matrix(n_in: int = SIZE_IN, n_out: int = SIZE_OUT) -> np.ndarray:
    """``[n_out, n_in]`` weights of exact area-averaging resampling; each row sums to 1.

    Output pixel i covers input coordinates ``[i s, (i+1) s)`` with ``s = n_in / n_out``; input pixel j covers
    ``[j, j+1)``; the weight is their overlap divided by s. A 2-D image resizes as ``A @ img @ A.T``.
    """
    s = n_in / n_out
    lo = np.arange(n_out)[:, None] * s
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(lo + s, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / s


def _read_zip(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode every PNG of one Omniglot zip in name order: the drawer of each image ``[N]`` and the ink
    images ``[N, 105, 105]`` uint8 (ink = 255, background = 0)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if n.endswith(".png") and not n.startswith("__MACOSX"))
            if not names:
                raise ValueError("no PNG files inside")
            from PIL import Image

            drawers, images = np.empty(len(names), dtype=np.int64), np.empty((len(names), SIZE_IN, SIZE_IN), np.uint8)
            for i, name in enumerate(names):
                match = PNG_NAME.search(name)
                if match is None:
                    raise ValueError(f"unexpected member {name!r}")
                with Image.open(io.BytesIO(archive.read(name))) as img:
                    if img.size != (SIZE_IN, SIZE_IN):
                        raise ValueError(f"{name} is {img.size[0]}x{img.size[1]}, expected 105x105")
                    # PNGs: white background = 1, ink = 0; inverted so that ink = 1
                    images[i] = 255 * ~np.asarray(img) if img.mode == "1" else 255 - np.asarray(img.convert("L"))
                drawers[i] = int(match.group(5))
                if not 1 <= drawers[i] <= 20:
                    raise ValueError(f"{name}: drawer {drawers[i]} outside 1-20")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise data_error("omniglot", f"cannot read {path}: {err}", [path], "delete it and download again") from None
    return drawers, images


def build_from_zips(zip_paths: list[Path], chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Resize both zips to 28x28 and split by drawer: ``(train, test)`` uint8 ``[N, 784]`` (ink = 255)."""
    A = area_matrix().astype(np.float32)  # [28, 105]; float32 suffices for 1/255 output steps
    train, test = [], []
    for path in zip_paths:
        drawers, images = _read_zip(path)  # [N], [N, 105, 105] uint8
        small = np.concatenate([A @ images[i : i + chunk].astype(np.float32) @ A.T
                                for i in range(0, len(images), chunk)])  # [N, 28, 28] in [0, 255]
        small = np.rint(np.clip(small, 0.0, 255.0)).astype(np.uint8).reshape(len(images), X_DIM)
        is_train = np.isin(drawers, TRAIN_DRAWERS)
        train.append(small[is_train])
        test.append(small[~is_train])
    return np.concatenate(train), np.concatenate(test)


def zip_hash(zip_paths: list[Path], digests: dict[Path, set[str]] | None = None) -> str:
    """The cache key of the zips' bytes; ``digests`` (when given) receives each zip's MD5 and SHA-256."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for path in zip_paths:
        data = path.read_bytes()
        digest.update(data)
        if digests is not None:
            digests[path] = {hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()}
    return digest.hexdigest()[:16]


def _check_zips(zips: list[Path], digests: dict[Path, set[str]], n_images: int) -> None:
    """DataError for a canonical zip whose bytes are neither the original's nor the checked copy's."""
    if n_images != sum(CANONICAL[p.name][0] for p in zips if p.name in CANONICAL):
        return  # not the full set (a fixture): nothing to compare with
    for path in zips:
        known = CANONICAL[path.name][1]
        if not digests[path] & set(known):
            sha256 = max(digests[path], key=len)
            check_digest("omniglot", path, sha256, set(known), "sha256")


def cache_name(key: str) -> str:
    return f"omniglot28_area_{key}.npz"


def read_chardata(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """IWAE's chardata.mat -> ``(train, test)`` float32 ``[N, 784]`` in row-major pixel order."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        data, testdata = (np.asarray(mat[k], dtype=np.float32) for k in ("data", "testdata"))
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as err:
        raise data_error("omniglot", f"cannot read {path} as IWAE's chardata.mat: {err!r}", [path]) from None

    def to_rows(x: np.ndarray) -> torch.Tensor:
        if x.ndim != 2 or x.shape[0] != X_DIM or not (np.all(x >= 0) and np.all(x <= 1)):
            raise data_error("omniglot", f"{path}: expected [784, N] values in [0, 1], got {x.shape}", [path])
        # IWAE: x.T.reshape(-1, 28, 28).reshape(-1, 784, order="F"), i.e. each image is stored transposed.
        return torch.from_numpy(np.ascontiguousarray(x.T.reshape(-1, 28, 28).transpose(0, 2, 1)).reshape(-1, X_DIM))

    return to_rows(data), to_rows(testdata)


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write then rename, so a concurrent reader never sees a partial cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as out:
            np.savez_compressed(out, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _find_zips(root: Path) -> list[Path] | None:
    for folder in zip_dirs(root):
        paths = [folder / name for name in ZIP_NAMES]
        if all(p.exists() for p in paths):
            return paths
    return None


def _load_zips(zips: list[Path], cache_dir: Path | None, verify: bool = True) -> RawSplits:
    digests: dict[Path, set[str]] = {}
    key = zip_hash(zips, digests)
    if cache_dir is None:
        cache_dir = zips[0].parent if writable_dir(zips[0].parent) else user_cache_dir()
    places = [cache_dir, zips[0].parent, user_cache_dir()]
    cached = next((d / cache_name(key) for d in places if (d / cache_name(key)).exists()), None)
    note = f"cache: {cached}"
    arrays = None
    if cached is not None:
        try:
            with np.load(cached) as f:
                arrays = f["train"], f["test"]
            if any(a.ndim != 2 or a.shape[1] != X_DIM or a.dtype != np.uint8 for a in arrays):
                arrays = None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            arrays = None  # a damaged cache is rebuilt from the zips
    if arrays is None:
        arrays = build_from_zips(zips)
        cached = cache_dir / cache_name(key)
        note = f"cache: {cached}"
        try:
            _write_npz(cached, train=arrays[0], test=arrays[1])
        except OSError as err:
            note = f"not cached: {err}"
    if verify:
        _check_zips(zips, digests, len(arrays[0]) + len(arrays[1]))
    train, test = (torch.from_numpy(a.astype(np.float32) / 255.0) for a in arrays)
    source = (f"omniglot: {' + '.join(ZIP_NAMES)} in {zips[0].parent}, area-resized 105->28, drawers 1-15 train / "
              f"16-20 test ({note})")
    return RawSplits(train, test, source)


def load(root: Path, download: bool | None, cache_dir: Path | None = None, verify: bool = True) -> RawSplits:
    chardata = next((p for p in chardata_candidates(root) if p.exists()), None)
    if chardata is not None:
        train, test = read_chardata(chardata)
        return RawSplits(train, test, f"omniglot: IWAE chardata.mat ({chardata})")
    zips = _find_zips(root)
    if zips is None and download is not False and (download or reachable(URL)):
        target = zip_dirs(root)[0]
        for name in ZIP_NAMES:
            if not (target / name).exists():
                try:
                    fetch(URL.format(name=name), target / name)
                except Exception as err:  # noqa: BLE001 - any failure becomes one DataError line
                    raise data_error("omniglot", f"download of {URL.format(name=name)} failed: {err}",
                                     [target / name]) from None
        zips = _find_zips(root)
    if zips is None:
        tried = chardata_candidates(root) + [d / n for d in zip_dirs(root) for n in ZIP_NAMES]
        raise data_error("omniglot", "neither chardata.mat nor both Omniglot zips found", tried,
                         f"zips: {URL.format(name='images_{background,evaluation}.zip')}; "
                         f"IWAE's 28x28 set: {IWAE_CHARDATA_URL}")
    return _load_zips(zips, cache_dir, verify)


def default_valid(n_train: int) -> int:
    return round(n_train * VALID_FRACTION)


SPEC = register(DatasetSpec("omniglot", load, dynamic=True, default_valid=default_valid, holdout=holdout_random))
