"""Datasets for the VAE experiments: ``load_dataset(name, ...)`` -> :class:`Dataset` (see ``core``).

Importing the dataset modules registers them; ``available_datasets()`` lists the names.
"""

from . import binarized_mnist, mnist, omniglot  # noqa: F401  (registration side effect)
from .core import ENV_VAR, DataError, Dataset, available_datasets, load_dataset, resolve_root

__all__ = ["DataError", "Dataset", "ENV_VAR", "available_datasets", "load_dataset", "resolve_root"]
