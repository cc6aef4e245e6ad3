"""Where the workbench may read and write by default: the workspace folder's location and the data roots.

    root = default_path()                              # $WORKBENCH_WORKSPACE or ~/.cot-drift-workbench
    path = check_data_path(typed, roots)               # a typed path, resolved, if it lies under the roots

Typed paths stay inside the data roots (the workspace, the world folders, ``$WORKBENCH_DATA_ROOTS``); the roots
themselves come from the workspace (``core.workspace.workspace.data_roots``), this module only applies them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.errors import InputError
from core.io.paths import expand

ENV_VAR = "WORKBENCH_WORKSPACE"
DATA_ROOTS_ENV = "WORKBENCH_DATA_ROOTS"  # more folders whose files the UI may open, os.pathsep-separated
_VARIABLE = re.compile(r"\$(?:(\w+)|\{(\w+)\})")


def default_path() -> Path:
    return expand(os.environ.get(ENV_VAR) or Path.home() / ".cot-drift-workbench")


def env_data_roots() -> list[Path]:
    """The folders ``$WORKBENCH_DATA_ROOTS`` names (``os.pathsep``-separated; empty entries skipped)."""
    return [Path(p) for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p.strip()]


def search_roots(workspace_root: str | Path, world_root: str | Path | None = None) -> list[Path]:
    """Where the UI looks for models and checkpoint series, in this order: the open world's folder, the
    workspace, then ``$WORKBENCH_DATA_ROOTS``."""
    return [*([Path(world_root)] if world_root else []), Path(workspace_root), *env_data_roots()]


def check_data_path(path: str | Path, roots: list[Path], typed: bool = True) -> Path:
    """``path`` resolved (links followed, so a link cannot lead out), if it lies under one of ``roots``; else an
    ``InputError`` whose message is the same whether or not the file exists, so a visitor learns nothing
    about the machine's files outside the data roots. ``typed=False``: a path as the engine reads it already
    (an image path inside a data file: ``~`` expanded, ``$VARS`` kept as written)."""
    if typed and (hidden := _not_paths(str(path))):
        raise InputError(f"{path}: ${hidden[0]} does not name a path on this machine, so a typed path does not expand "
                         "it (a value such as a token would show in the messages); type the folder itself")
    # a typed path is expanded as the engine expands it before reading (``core.io.paths.expand``: ~ and $VARS),
    # so that the path checked is the path read ($HOME/../outside was checked literally, under the working directory)
    resolved = Path(os.path.realpath(expand(path) if typed else path))
    for root in roots:
        if resolved.is_relative_to(os.path.realpath(expand(root))):
            return resolved
    raise InputError(f"{path}: not under the data roots, so the workbench does not open it. Typed paths must lie "
                     f"in the workspace, a world folder or ${DATA_ROOTS_ENV} (start the workbench with "
                     f"{DATA_ROOTS_ENV}=/your/data to add a folder)")


def _not_paths(path: str) -> list[str]:
    """The variables ``path`` names whose value is not an existing absolute path (a token, a password, or unset:
    the same answer, so nothing tells which variables the server has)."""
    names = [a or b for a, b in _VARIABLE.findall(path)]
    return [n for n in names if not (os.path.isabs(os.environ.get(n, "")) and os.path.exists(os.environ[n]))]


def check_image_refs(refs: list, roots: list[Path] | None) -> None:
    """Every image a data file names (``core.io.images.ImageRef``: its path as read, and where the file names it)
    under ``roots``, before anything opens it: the ``InputError`` names the file, the record and the path, and is
    the same whether or not the image exists. ``roots`` None: unchecked (a local user's command line)."""
    for ref in refs if roots is not None else ():
        try:
            check_data_path(ref.path, list(roots), typed=False)  # the path the reader opens, not re-expanded
        except InputError as e:
            raise InputError(f"{ref.where}: {e}") from None


def refused_paths(paths: list[str | None], roots: list[Path]) -> list[str]:
    """One message per typed path outside ``roots`` (``check_data_path``); empty and None entries are skipped."""
    problems = []
    for p in paths:
        if p and p.strip():
            try:
                check_data_path(p.strip(), roots)
            except InputError as e:
                problems.append(str(e))
    return problems
