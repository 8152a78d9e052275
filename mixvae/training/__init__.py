"""Training: the loop (loop.py), evaluation, checkpoints, the run's files, and the W&B wrapper.

``train(cfg, run_dir)`` is what train.py calls; tests call it in-process with a composed config.
"""

from mixvae.training.errors import ConfigError, MixVAEError, NonFiniteError, RunBusyError
from mixvae.training.evaluate import evaluate
from mixvae.training.loop import Trainer, run_differences, train, validate_config

__all__ = ["ConfigError", "MixVAEError", "NonFiniteError", "RunBusyError", "Trainer", "evaluate", "run_differences",
           "train", "validate_config"]
