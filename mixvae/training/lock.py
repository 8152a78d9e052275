"""One process at a time in a run directory: an exclusive lock on ``<run dir>/run.lock`` while a run trains or tests.

Without it, two invocations of the same command in one run directory (a run relaunched because it looked dead,
two sweeps given the same sweep dir) would both resume the same checkpoint, interleave their records in
metrics.jsonl and overwrite each other's checkpoint.pt. The second one now stops at once with one line naming
the holder's PID, before it reads or writes anything.

The lock is an advisory ``flock`` (``msvcrt.locking`` on Windows) on the open file: the operating system drops
it when the holder's process ends, however it ends (SIGKILL and power loss included), so a killed run never
leaves a stale lock behind and the same command continues it. The file stays in the run directory (removing it
would let a third process lock a fresh file while the second still holds the old one); it holds the holder's
PID, host and start time, for the message. A file system that cannot lock (some network mounts) gives a warning
and the run goes on unguarded.
"""

from __future__ import annotations

import datetime
import errno
import os
import socket
import warnings
from pathlib import Path

from mixvae.training.errors import RunBusyError

LOCK = "run.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


def _try_lock(fh) -> bool:
    """Take the exclusive lock on the open file without waiting; False if another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError as e:
        if e.errno in _BUSY:
            return False
        raise
    return True


def _unlock(fh) -> None:
    if fcntl is not None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    else:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)


class RunLock:
    """``with RunLock(run_dir): ...``: hold the run directory's lock for the block, or raise RunBusyError."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self._fh = None

    def __enter__(self) -> RunLock:
        # "a+": never truncate before holding the lock (the holder's line is what the message quotes)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            locked = _try_lock(fh)
        except OSError as e:
            warnings.warn(f"cannot lock {self.path} ({e.strerror or e}): a second invocation in this run "
                          "directory would not be refused; run one command per run directory", stacklevel=2)
            self._fh = fh
            return self
        if not locked:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            pid = holder.split()[1] if holder.startswith("pid ") else None
            stop = f"stop it (kill {pid})" if pid else "stop it"
            raise RunBusyError(f"{self.path.parent} is in use by {holder}; wait for that run to finish or {stop}, "
                               "then rerun this command to continue it, or give this one another directory "
                               "(hydra.run.dir=DIR, or hydra.sweep.dir=DIR for a sweep)")
        fh.seek(0)
        fh.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            _unlock(fh)
        except OSError:
            pass  # closing the file releases it anyway
        fh.close()
