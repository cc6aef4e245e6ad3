"""One writer per folder: an exclusive lock file that names its holder and goes when the holder's process ends.

    with lock_folder(run_dir, "run folder"):      # InputError naming the holder if another process writes it
        ...
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from core.errors import InputError

LOCK_FILE = ".writer.lock"


def lock_folder(folder: str | Path, what: str = "folder"):
    """For writers: hold ``folder/.writer.lock`` (an exclusive ``flock``, released when this process ends,
    however it ends) with this process's pid and start time in it. Raises ``InputError`` naming the holder
    when another live process writes the folder. Keep the returned file open while writing."""
    return lock_path(Path(folder) / LOCK_FILE, folder, what)


def lock_dir(folder: str | Path, what: str = "folder") -> int:
    """For a folder that is swapped in whole (an analysis folder) and whose contents a lock file must not join:
    an exclusive ``flock`` on the folder itself, released when this process ends; returns the descriptor to
    keep open (``os.close`` releases it). ``InputError`` naming the folder when another process holds it."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise InputError(f"{folder}: another process writes this {what}; wait for it to end or cancel it") from None
    return fd


def lock_path(path: Path, folder: str | Path, what: str = "folder"):
    """``lock_folder`` with the lock file at ``path`` (elsewhere than in the folder)."""
    import fcntl

    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise InputError(f"{folder}: another process writes this {what} ({holder}); wait for it to end "
                         "or cancel it") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f
