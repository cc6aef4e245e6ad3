"""Paths as a user types them: ``~`` and ``$VARS`` expanded, the same way at every entry to the engine.

    expand("~/.cot-drift-workbench/cache")   # -> Path("/home/me/.cot-drift-workbench/cache")
    expand_str("$DATA/run.json")             # -> "/data/run.json" (configs keep strings)

A shell expands these before a command sees them; a notebook, a config file or a text box does not, and
a literal ``~`` folder inside the current directory is never what was meant.
"""

from __future__ import annotations

import os
from pathlib import Path


def expand_str(path: str | os.PathLike) -> str:
    """``path`` with ``~``, ``~user`` and ``$VAR`` / ``${VAR}`` expanded (unknown variables are left as typed)."""
    return os.path.expanduser(os.path.expandvars(os.fspath(path)))


def expand(path: str | os.PathLike) -> Path:
    return Path(expand_str(path))


def expand_optional(path: str | os.PathLike | None) -> str | None:
    return None if path is None or path == "" else expand_str(path)


def expand_fields(cfg) -> None:
    """Expand, in place, the path fields of a config (``ConfigBase.path_fields``: one path or a list of them);
    an empty optional path becomes None."""
    for name in cfg.path_fields():
        value = getattr(cfg, name)
        if isinstance(value, list):
            setattr(cfg, name, [expand_str(v) for v in value])
        elif isinstance(value, (str, os.PathLike)):
            empty = None if cfg.types()[name].optional else ""
            setattr(cfg, name, expand_str(value) if os.fspath(value) != "" else empty)


def child(folder: Path, name: object, where: str) -> Path:
    """``folder / name`` for a name a file inside ``folder`` gives (a split of ``dataset_dict.json``, a data file
    of ``state.json``): one plain name whose real path stays inside ``folder``, else an ``InputError`` naming
    ``where`` ("../../outside/train" would import a dataset outside the data roots)."""
    from core.errors import InputError

    plain = isinstance(name, str) and name.strip() and name not in (".", "..") and not any(
        sep in name for sep in ("/", "\\", os.sep))
    path = Path(folder) / name if plain else None
    if path is None or not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder)):
        raise InputError(f"{where}: expected the name of a file or folder inside {folder}, got {name!r}")
    return path
