"""Where a command may write: never over something the workbench did not write.

    check_analysis_folder(Path("out"), force=False)   # before scoring, so a refusal costs no compute
    check_result_file(Path("pairs.parquet"), force=False, columns=PERTURB_COLUMNS)

An output path is free when it does not exist (or is an empty folder). One that holds a previous result of
the same kind (an analysis folder: only its tables and config.json; a parquet file with the expected
columns) is replaced only with ``force``. Anything else, a file of the user's, a folder with other files,
a file where a folder is expected, is refused with an ``InputError`` naming the path.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import InputError

PERTURB_COLUMNS = ("traj_id", "checkpoint", "step", "answer_before", "answer_after", "flip")


# the tables of an analysis folder, and what it holds besides them (core.drift.analysis.Analysis.save)
ANALYSIS_TABLES = ("tokens", "beliefs", "effects", "summary", "by_token", "by_concept", "by_context", "changes")
ANALYSIS_EXTRAS = ("trajectories.jsonl", "trajectories.parquet", "by_category.parquet")


# What the workbench wrote into an output folder: file name -> [size, mtime_ns] as written. ``--force`` replaces
# a folder only when every file in it is listed here unchanged: a config.json or trajectories.jsonl of the
# user's (same names as the workbench's own) is never taken for the workbench's.
MANIFEST = ".workbench-files.json"


def write_manifest(folder: Path) -> None:
    """List every file of ``folder`` (written by the workbench, about to be swapped in) in its ``MANIFEST``."""
    import json

    files = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir())
             if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).unlink(missing_ok=True)  # a hard link of another folder's manifest stays as it was
    (folder / MANIFEST).write_text(json.dumps(files, indent=0) + "\n")


def unlisted_files(folder: Path) -> list[str]:
    """The files of ``folder`` its ``MANIFEST`` does not list as the workbench wrote them (all, without one)."""
    import json

    try:
        listed = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        listed = {}
    listed = listed if isinstance(listed, dict) else {}
    return sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and not (
        p.is_file() and not p.is_symlink() and listed.get(p.name) == [p.stat().st_size, p.stat().st_mtime_ns]))


def check_analysis_folder(out: Path, force: bool, tables: tuple[str, ...] = ANALYSIS_TABLES) -> None:
    """Refuse ``out`` unless it is new, empty, or (with ``force``) a previous analysis whose every file its
    manifest lists as the workbench wrote it (``MANIFEST``)."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise InputError(f"{out}: a file is there; --out names a folder for the analysis (choose a new folder)")
    names = {p.name for p in out.iterdir()}
    if not names:
        return
    ours = {f"{t}.parquet" for t in tables} | {"config.json", MANIFEST, *ANALYSIS_EXTRAS}
    foreign = sorted(names - ours) or unlisted_files(out)
    if foreign or "config.json" not in names:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(f"{out}: the folder holds files the workbench did not write ({shown or 'no config.json'}); "
                         "nothing was changed. Choose a new or empty folder for --out")
    if not force:
        raise InputError(f"{out}: holds a previous analysis; add --force to replace it, or choose another --out")


def check_result_file(out: Path, force: bool, columns: tuple[str, ...]) -> None:
    """Refuse ``out`` unless it is new or (with ``force``) a parquet file this workbench wrote (``columns``)."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir():
        raise InputError(f"{out}: a folder is there; --out names a parquet file")
    if not _parquet_with(out, columns):
        raise InputError(f"{out}: a file the workbench did not write is there; nothing was changed. "
                         "Choose a new file name for --out")
    if not force:
        raise InputError(f"{out}: holds a previous result; add --force to replace it, or choose another --out")


@contextmanager
def disk_full_named(path: Path) -> Iterator[None]:
    """Turn a full disk (or quota) while writing ``path`` into an ``InputError`` naming it; the writers
    under it write to a temporary file or folder and rename, so nothing partial is left."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"{path}: disk full while writing; nothing was written. Free some space and "
                             "retry") from None
        raise


def _parquet_with(path: Path, columns: tuple[str, ...]) -> bool:
    try:
        import pyarrow.parquet as pq

        return set(columns) <= set(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - not parquet, unreadable, a link to nowhere: not ours
        return False
