"""Atomic file writes: the one primitive every layer uses (the config base, a job's progress file, the result cache).

    atomic_write_text(Path("config.json"), text)             # readers see the old file or the new one, never half
    atomic_write(path, lambda tmp: df.to_parquet(tmp))       # any writer that takes a path

A root module (standard library only), so that ``core.config`` and ``core.progress`` below ``core.io`` can use it;
``core.io.cache`` re-exports it for the modules that know it from there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], durable: bool = True) -> None:
    """``write`` a unique temporary file beside ``path``, fsync it (when ``durable``), rename it into place.
    Readers never see a partial file either way; ``durable`` also survives a power cut, at the price of an
    fsync, which can stall for seconds on a busy disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable)
