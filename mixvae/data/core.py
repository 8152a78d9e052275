"""Datasets as whole tensors on the training device, batched by index slices.

The contract, once:

* ``load_dataset(name, ...)`` returns a :class:`Dataset` whose ``train``, ``valid`` and ``test`` are float32
  tensors ``[N, 784]`` with values in ``[0, 1]``, already on ``device``. 28x28 images are small enough
  (MNIST train: 188 MB as float32) that the whole set lives on the device and a batch is an index slice; no
  ``DataLoader`` worker processes.
* ``dataset.dynamic`` is True for grayscale sets (``mnist``, ``omniglot``): every batch is binarized afresh,
  ``x ~ Bernoulli(intensity)``, the protocol of Burda et al. (2016, IWAE, section 5.1) following Salakhutdinov
  & Murray (2008). ``binarized_mnist`` is the fixed binarization of Larochelle & Murray (2011) and is served
  as stored.
* A missing or corrupt file raises :class:`DataError` with a one-line message naming the paths tried and how to
  get the files. A file with a canonical name and the canonical size whose digest differs from the published
  file's (:func:`check_digest`) is corrupt too, unless ``verify=False`` (``dataset.verify=false``). Generated
  test fixtures have canonical names but other sizes, so they are not checked.

Each dataset module registers a :class:`DatasetSpec` in ``REGISTRY``; ``load_dataset`` dispatches through it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

X_DIM = 784
ENV_VAR = "MIXVAE_DATA_DIR"
SPLITS = ("train", "valid", "test")
HOW_TO_GET = (
    f"set {ENV_VAR} or dataset.root to a folder that holds them, or run online with dataset.download=true "
    "(dataset.download=null, the default, fetches them when the network is reachable)"
)


class DataError(RuntimeError):
    """A dataset file is missing, unreadable or corrupt. The message is one line."""


def check_digest(name: str, path: Path, digest: str, known: set[str], what: str = "sha256") -> None:
    """DataError unless ``digest`` (of ``path``'s content, computed as ``what`` says) is one of ``known``."""
    if digest not in known:
        raise DataError(f"{name}: {path} does not match the canonical file ({what} {digest[:16]}..., expected "
                        f"{' or '.join(k[:16] + '...' for k in sorted(known))}): its content is damaged or not the "
                        "published data; delete it and download again, or set dataset.verify=false to use it as "
                        "it is")


def data_error(name: str, problem: str, tried: list[Path] | list[str], hint: str = "") -> DataError:
    """One-line :class:`DataError`: what is wrong, the paths tried, and how to get the files."""
    paths = ", ".join(str(p) for p in tried)
    hint = f"; {hint}" if hint else ""
    return DataError(f"{name}: {problem} (tried: {paths}){hint}; {HOW_TO_GET}")


@dataclass
class RawSplits:
    """What a dataset module's loader returns: CPU float32 tensors ``[N, 784]`` in ``[0, 1]``.

    ``valid`` is the dataset's own validation file when it publishes one (binarized MNIST), else None and
    the validation set is held out of ``train`` by the spec's ``holdout`` rule.
    """

    train: torch.Tensor
    test: torch.Tensor
    source: str
    valid: torch.Tensor | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset.

    load(root, download, cache_dir, verify) -> RawSplits; ``verify``: check canonical files' digests.
    default_valid(n_train) -> the number of training images held out when ``valid_size`` is None.
    holdout(n_train, n_valid, seed) -> (train_idx, valid_idx), two disjoint LongTensors.
    """

    name: str
    load: Callable[[Path, bool | None, Path | None, bool], RawSplits]
    dynamic: bool
    default_valid: Callable[[int], int] = lambda n: 0
    holdout: Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]] | None = None


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    REGISTRY[spec.name] = spec
    return spec


def available_datasets() -> list[str]:
    return sorted(REGISTRY)


def holdout_last(n_train: int, n_valid: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``n_valid`` training images are the validation set (seed unused).

    For MNIST this is the split of Larochelle & Murray's binarized MNIST (its valid file is MNIST train images
    50,000-59,999), so grayscale and binarized runs validate on the same digits.
    """
    idx = torch.arange(n_train)
    return idx[: n_train - n_valid], idx[n_train - n_valid :]


def holdout_random(n_train: int, n_valid: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of ``n_valid`` images; both parts keep the file order.

    Used where the file order is structured (Omniglot is ordered by alphabet, so the last images would all
    come from one or two alphabets).
    """
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return perm[n_valid:].sort().values, perm[:n_valid].sort().values


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else env ``MIXVAE_DATA_DIR``, else ``./data`` (relative to the working directory)."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_VAR) or "data"
    return Path(root).expanduser()


class Dataset:
    """A dataset held as three tensors on one device.

    Attributes:
        name, source: the dataset name and a line saying which files were used.
        train, valid, test: float32 ``[N, 784]`` in ``[0, 1]`` on ``device`` (``valid`` may have N = 0).
        dynamic: True when :meth:`batches` binarizes afresh on every use.
        x_dim: 784.
        train_mean: ``[784]`` mean training image; IWAE initialises the decoder's output bias to its logit.
    """

    def __init__(self, name: str, source: str, train: torch.Tensor, valid: torch.Tensor,
                 test: torch.Tensor, dynamic: bool):
        self.name = name
        self.source = source
        self.train, self.valid, self.test = train, valid, test
        self.dynamic = dynamic
        self.x_dim = train.shape[1]
        self.train_mean = train.mean(0)  # [784]

    @property
    def device(self) -> torch.device:
        return self.train.device

    def split(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)

    def num_batches(self, split: str, batch_size: int) -> int:
        return math.ceil(self.split(split).shape[0] / batch_size)

    def batches(self, split: str, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, binarize: bool | None = None) -> Iterator[torch.Tensor]:
        """Yield ``[B, 784]`` float32 batches covering the split once; the last batch may be smaller.

        shuffle: visit the images in the order of ``torch.randperm(N, generator=generator)``.
        binarize: draw ``torch.bernoulli(x, generator=generator)`` per batch; default ``self.dynamic``.
        generator: drives both the permutation and the Bernoulli draws; for binarization it must be on
            ``self.device`` (torch samples with a generator on its own device only).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = self.split(split)
        binarize = self.dynamic if binarize is None else binarize
        if binarize and generator is not None and generator.device.type != x.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the data is on {x.device}; "
                "create it with torch.Generator(device=dataset.device)"
            )
        n = x.shape[0]
        order = None
        if shuffle:
            gen_device = generator.device if generator is not None else "cpu"
            order = torch.randperm(n, generator=generator, device=gen_device).to(x.device)
        for start in range(0, n, batch_size):
            batch = x[start : start + batch_size] if order is None else x[order[start : start + batch_size]]
            yield torch.bernoulli(batch, generator=generator) if binarize else batch

    def sizes(self) -> dict[str, int]:
        return {s: int(self.split(s).shape[0]) for s in SPLITS}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes().items())
        return f"Dataset({self.name!r}, {sizes}, dynamic={self.dynamic}, device={self.device}, source={self.source!r})"


def load_dataset(name: str, root: str | os.PathLike | None = None, valid_size: int | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, download: bool | None = None,
                 cache_dir: str | os.PathLike | None = None, verify: bool = True) -> Dataset:
    """Load ``name`` from ``root`` (see :func:`resolve_root`) onto ``device``.

    valid_size: training images held out for validation. None = the dataset's default (mnist: the last
        10,000 of the 60,000; omniglot: a seeded random 1,345 of the training images; binarized_mnist: its
        canonical valid file). 0 = no validation set; for binarized_mnist 0 merges the valid file into train.
    seed: drives the random hold-out (omniglot) only.
    download: None = download missing files only when the network is reachable (checked with a short
        timeout); True = download missing files or fail; False = never touch the network.
    cache_dir: where derived files (the resized Omniglot) go; default the dataset folder in ``root`` when
        writable, else ``$XDG_CACHE_HOME/mixvae`` (``~/.cache/mixvae``).
    verify: compare files with canonical names and sizes against the published files' digests (DataError on
        a mismatch); False uses them as they are.
    """
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    spec = REGISTRY[name]
    if valid_size is not None and valid_size < 0:
        raise ValueError(f"valid_size must be >= 0 or None, got {valid_size}")
    raw = spec.load(resolve_root(root), download, Path(cache_dir) if cache_dir is not None else None, verify)
    train, valid = raw.train, raw.valid
    if valid is not None:
        if valid_size == 0:
            train, valid = torch.cat([train, valid]), valid[:0]
        elif valid_size is not None and valid_size != valid.shape[0]:
            warnings.warn(f"{name}: valid_size={valid_size} ignored, the dataset's own valid split has "
                          f"{valid.shape[0]} images (valid_size=0 merges it into train)", stacklevel=2)
    else:
        n_valid = spec.default_valid(train.shape[0]) if valid_size is None else valid_size
        if n_valid >= train.shape[0]:
            raise ValueError(f"{name}: valid_size={n_valid} leaves no training images (train has {train.shape[0]})")
        train_idx, valid_idx = spec.holdout(train.shape[0], n_valid, seed)
        train, valid = train[train_idx], train[valid_idx]
    to = dict(device=device, dtype=torch.float32)
    return Dataset(name, raw.source, train.to(**to), valid.to(**to), raw.test.to(**to), spec.dynamic)
