"""Errors the command line reports as one line (no traceback), with their exit codes."""

from __future__ import annotations


class MixVAEError(Exception):
    """Base of the errors train.py turns into ``error: <message>`` on stderr and ``exit_code``."""

    exit_code = 2


class ConfigError(MixVAEError, ValueError):
    """A config value is out of range or options are incompatible; the message names the key and the fix."""


class NonFiniteError(MixVAEError, FloatingPointError):
    """The loss or the gradient became NaN/inf; training stopped and the last good checkpoint was kept."""

    exit_code = 3


class CheckpointError(MixVAEError):
    """A checkpoint cannot be read (truncated, corrupt) or written (disk full); the message names the file."""


class RunFilesError(MixVAEError):
    """A run file cannot be written (no space left, a read-only directory); the last checkpoint is kept."""


class RunBusyError(MixVAEError):
    """Another live process holds the run directory's lock (mixvae.training.lock); the message names its PID."""
