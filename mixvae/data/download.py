"""Network helpers: a bounded reachability check and an atomic file download.

``download=None`` must never hang on an offline machine, so reachability is a TCP connect with a short timeout
run in a daemon thread (``socket.create_connection``'s timeout does not cover a slow DNS lookup).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

REACH_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 60.0


def reachable(url: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def fetch(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` via a temporary file, so an interrupted download leaves no partial file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def writable_dir(path: Path) -> bool:
    """True when ``path`` (or its nearest existing parent) may be written.

    A directory without any write permission bit counts as read-only even for root, who bypasses
    ``os.access``: a read-only data mirror must not receive cache files.
    """
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    mode = path.stat().st_mode
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mixvae``, else ``~/.cache/mixvae``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mixvae"
