"""A small on-disk cache of result tables (parquet), keyed by everything that determines them.

    key = cache_key(series.fingerprint(), data_hash, asdict(cfg))
    df = cached_frame(cache_dir, "scores", key, lambda: score(...))

Writes go to a temporary file renamed into place, so a killed process never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.atomic import atomic_write, atomic_write_text  # noqa: F401 - re-exported for the modules that write through core.io.cache
from core.io.paths import expand

if TYPE_CHECKING:
    import pyarrow as pa


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def write_parquet(df: pd.DataFrame, path: Path, **options) -> None:
    """``df`` to ``path`` atomically; ``options`` go to pyarrow (e.g. ``row_group_size``)."""
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False, **options))


def _read_cached(path: Path) -> pd.DataFrame | None:
    """A cache entry, or None when there is none; a cut or damaged one (pyarrow's errors derive from OSError and
    ValueError) is removed, to be computed again."""
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None


def cached_frame(cache_dir: str | Path | None, kind: str, key: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``compute()`` once per key; later calls read the parquet file."""
    if cache_dir is None:
        return compute()
    path = expand(cache_dir) / f"{kind}-{key}.parquet"
    if (hit := _read_cached(path)) is not None:
        return hit
    write_parquet(compute(), path)
    return pd.read_parquet(path)  # the same types on the first call as on every later one


def part_name(ids: Iterable[str]) -> str:
    """The file name of the part that holds the trajectories ``ids`` (the same ids, the same part)."""
    return "part-" + cache_key(list(ids))


def stored_grid(cache_dir: str | Path | None, kind: str, keys: dict[str, str], names: list[str],
                compute: Callable[[dict[str, set[str]]], Iterator[tuple[str, str, pd.DataFrame]]],
                scratch: Path) -> list[list[Path]]:
    """A table computed in parts, each written to disk as soon as it is done, so that a killed or cancelled run
    keeps what it finished and the next run computes only what is missing. The table is cut two ways: in parts
    (``names``, e.g. batches of trajectories, a caller reads one at a time) and in columns of a grid (``keys``: column -> its own key, e.g. one per checkpoint). Part ``n`` of column ``c``
    is ``<kind>-<keys[c]>.parts/<n>.parquet``, so a column whose key did not change (a checkpoint already
    scored) is read, never computed again, when another column is added. ``compute(missing)`` gets column ->
    the part names it lacks and yields (column, part name, frame) for them. Returns, per part name in order,
    the paths of its columns in ``keys`` order. Without a cache the parts go to ``scratch``."""
    root = expand(cache_dir) if cache_dir is not None else scratch
    folders = {c: root / f"{kind}-{k}.parts" for c, k in keys.items()}
    missing = {c: {n for n in names if not _readable(folders[c] / f"{n}.parquet")} for c in keys}
    missing = {c: m for c, m in missing.items() if m}
    if missing:
        for column, name, frame in compute(missing):
            write_parquet(frame, folders[column] / f"{name}.parquet")
    return [[folders[c] / f"{n}.parquet" for c in keys] for n in names]


def _readable(path: Path) -> bool:
    """A stored part whose footer reads (a cut or damaged one is removed, to be computed again)."""
    return _read_cached_schema(path) is not None


def _read_cached_schema(path: Path) -> Path | None:
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
        return path
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None


class SortedByTrajectory:
    """One parquet file of a per-trajectory table whose rows arrive part by part in any trajectory order,
    written sorted by ``traj_id`` (stable: a trajectory's rows keep their order) in row groups of exactly
    ``row_group`` rows, as a whole sorted table would be written. An external sort: each part's rows go
    to bucket files by the trajectory's rank among ``ids`` (``per_bucket`` trajectories per bucket; by default
    as many as make about ``bucket_rows`` rows, judged from the first part); at ``finish`` the buckets are
    read, sorted and appended one at a time, so memory holds one bucket.

        out = SortedByTrajectory(folder / "tokens.parquet", ids, scratch)
        for part in parts: out.add(part)
        out.finish(empty=df.head(0))
    """

    def __init__(self, path: Path, ids: list[str], scratch: Path, per_bucket: int | None = None,
                 row_group: int = 8_192, bucket_rows: int = 1 << 18):
        import pyarrow as pa

        self.path, self.scratch, self.per_bucket, self.row_group = path, scratch, per_bucket, row_group
        self.bucket_rows = bucket_rows  # 262,144 rows: about 50 MB of a token table with its top-k lists
        self.ids = pa.array(sorted(set(ids)), type=pa.large_string())
        self.files: dict[int, list[Path]] = {}
        self.schema = None
        scratch.mkdir(parents=True, exist_ok=True)

    def add(self, frame: pd.DataFrame | pa.Table) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.feather as feather

        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata(None)
        if not table.num_rows:
            return
        if self.per_bucket is None:  # trajectories per bucket, from this first part's rows per trajectory
            per_trajectory = table.num_rows / max(1, pc.count_distinct(table["traj_id"]).as_py())
            self.per_bucket = max(1, int(self.bucket_rows // per_trajectory))
        rank = pc.index_in(pc.cast(table["traj_id"], pa.large_string()), value_set=self.ids)
        if rank.null_count:
            raise ValueError(f"{self.path.name}: rows of a trajectory that is not in the run")
        bucket = pc.divide(rank, self.per_bucket).to_numpy()  # integer division of int32
        self.schema = table.schema if self.schema is None else pa.unify_schemas(
            [self.schema, table.schema], promote_options="permissive")
        for b in np.unique(bucket):
            path = self.scratch / f"{self.path.stem}-{b:07d}-{sum(map(len, self.files.values())):07d}.arrow"
            feather.write_feather(table.filter(pa.array(bucket == b)), path, compression="lz4")  # fast to write and read
            self.files.setdefault(int(b), []).append(path)

    def finish(self, empty: pd.DataFrame) -> None:
        """Write the file (atomically); ``empty`` (the table's columns, no rows) when no row was added."""
        if self.schema is None:
            write_parquet(empty, self.path)
            return
        atomic_write(self.path, self._write_sorted)

    def _write_sorted(self, tmp: Path) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.feather as feather
        import pyarrow.parquet as pq

        carry = None
        with pq.ParquetWriter(tmp, self.schema) as writer:
            for b in sorted(self.files):
                t = pa.concat_tables([feather.read_table(f, memory_map=False).cast(self.schema) for f in self.files[b]])
                t = t.take(pc.sort_indices(t, sort_keys=[("traj_id", "ascending")]))  # a stable sort
                t = pa.concat_tables([carry, t]) if carry is not None else t
                whole = t.num_rows - t.num_rows % self.row_group
                if whole:
                    writer.write_table(t.slice(0, whole), row_group_size=self.row_group)
                carry = t.slice(whole)
                for f in self.files[b]:
                    f.unlink()
            if carry is not None and carry.num_rows:
                writer.write_table(carry, row_group_size=self.row_group)


def swap_in_folder(tmp: Path, out: Path) -> None:
    """Replace folder ``out`` by the finished folder ``tmp`` (a rename; the old one is removed after), so a
    crash never leaves a half-written or mixed folder at ``out``."""
    import shutil

    if out.exists() and not out.is_dir():  # never move a user's file aside (core.io.outputs checks first)
        from core.errors import InputError

        raise InputError(f"{out}: a file is there, not a folder; nothing was written")
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
