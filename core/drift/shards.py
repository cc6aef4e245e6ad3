"""Scoring past one process: the trajectories dealt over N shards, each scored by its own process, GPU or
machine into its own folder, then merged into one analysis equal to an unsharded run.

    run_shard(cfg, Shard(0, 2), out, cache_dir)     # one process
    run_shard(cfg, Shard(1, 2), out, cache_dir)     # another (another GPU, another machine on a shared disk)
    merge(out).save(out)                            # when every shard is done

On the command line: ``workbench score ... --out DIR --shard I/N`` per process, then ``workbench score --merge
--out DIR``; or ``accelerate launch`` of ``workbench score ... --out DIR``, where each process takes the shard
RANK/WORLD_SIZE and rank 0 merges once the others are done.

Shard I of N takes trajectories I, I + N, I + 2N, ... of the data (after ``limit``), so every shard gets long
and short ones alike. Its results go to ``.DIR.shards/I-of-N/`` beside DIR (hidden, so that DIR stays new
until the merge swaps the analysis in): its records, its scoring and probe tables, and ``shard.json`` last,
which says the shard is complete and for which run (the whole config, the data's and the series' hashes).
A shard scores through the workspace cache like any run, so a killed shard resumes where it stopped.
The merge computes the drift tables from the shards' tables part by part (``analysis.assemble_parts``), each
shard's file read a few row groups at a time in slices of whole trajectories: host memory does not grow with
the trajectories, and the tables are written sorted by trajectory as one process writes them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.drift.analysis import (
    AnalysisConfig,
    StagedAnalysis,
    assemble_parts,
    encode_records,
    resolve_labels,
    run_analysis,
)
from core.errors import InputError
from core.io.cache import atomic_write_text, write_parquet
from core.io.trajectories import data_hash, read_jsonl
from core.models.series import branch_starts, plan_series, series_fingerprint
from core.progress import Progress

SHARD_TABLES = ("tokens", "beliefs")  # what a shard computes; the drift tables come from them at the merge
DONE = "shard.json"
PART_ROWS = 1 << 16  # rows per part the merge reads from a shard's table (plus one trajectory's)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self):
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise InputError(f"shard {self.index}/{self.count}: expected I/N with 0 <= I < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"``, as ``--shard`` takes it."""
        try:
            index, count = (int(x) for x in text.split("/"))
        except ValueError:
            raise InputError(f"--shard: expected I/N (e.g. 0/4), got {text!r}") from None
        return cls(index, count)

    @classmethod
    def from_env(cls, environ=os.environ) -> Shard | None:
        """The shard of this process under ``accelerate launch`` / torchrun (RANK of WORLD_SIZE); None alone."""
        count = int(environ.get("WORLD_SIZE", "1") or 1)
        return cls(int(environ.get("RANK", "0") or 0), count) if count > 1 else None

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def take(self, records: list) -> list:
        return records[self.index:: self.count]


def shard_root(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.shards")


def _stamp(cfg: AnalysisConfig, count: int) -> dict:
    """What makes shards of the same run: the config, the number of shards, the data and the series."""
    base, infos, _, dtype = plan_series(cfg.base, cfg.checkpoints, cfg.device, cfg.dtype)
    return {"count": count, "config": asdict(cfg), "data_hash": data_hash(cfg.data),
            "series": series_fingerprint(base, infos, dtype)}


def run_shard(cfg: AnalysisConfig, shard: Shard, out: str | Path, cache_dir: str | Path | None = None,
              progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None) -> Path:
    """Score and probe this shard's trajectories into its folder; returns the folder."""
    records = read_jsonl(cfg.data, cfg.limit, fmt=cfg.answers)
    labels, _ = resolve_labels(cfg, records)  # the whole data's labels, not those of this shard's share
    folder = shard_root(out) / shard.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DONE).unlink(missing_ok=True)
    mine = shard.take(records)
    if not mine:  # an earlier run's tables (more records then) are not this shard's: the merge must not read them
        for name in SHARD_TABLES:
            (folder / f"{name}.parquet").unlink(missing_ok=True)
    else:
        data = folder / "records.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mine)
        if not data.is_file() or data.read_text(encoding="utf-8") != text:  # unchanged: the cache key holds
            atomic_write_text(data, text)
        part = run_analysis(replace(cfg, data=str(data), limit=None, labels=labels), cache_dir, progress,
                            should_cancel)
        for name in SHARD_TABLES:  # the staged files as they are: never read whole
            _place(part.folder / f"{name}.parquet", folder / f"{name}.parquet")
    atomic_write_text(folder / DONE, json.dumps({**_stamp(cfg, shard.count), "index": shard.index,
                                                 "trajectories": len(mine)}, indent=1))
    return folder


def _place(src: Path, dst: Path) -> None:
    """``src`` at ``dst``, hard-linked (copied across file systems), swapped in whole."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def finished(out: str | Path, cfg: AnalysisConfig, count: int) -> list[int]:
    """The shards of this run (config, data, series and count alike) that are complete."""
    stamp = json.loads(json.dumps(_stamp(cfg, count)))  # as read back from JSON
    done = []
    for path in shard_root(out).glob(f"*-of-{count}/{DONE}"):
        meta = _read(path)
        if {k: meta.get(k) for k in stamp} == stamp:
            done.append(meta["index"])
    return sorted(done)


def wait_for(out: str | Path, cfg: AnalysisConfig, count: int, progress: Progress | None = None,
             poll: float = 5.0) -> None:
    """Until every shard of this run is complete (under accelerate, a failed process stops them all)."""
    while len(done := finished(out, cfg, count)) < count:
        if progress:
            progress(len(done), count, f"waiting for shards {sorted(set(range(count)) - set(done))}")
        time.sleep(poll)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable shard record ({type(e).__name__})") from None


def merge(out: str | Path) -> StagedAnalysis:
    """The analysis of every shard in ``out``'s shard folder, equal to an unsharded run's, computed part by part
    (staged beside ``out``, so that ``save`` links its files into it)."""
    root = shard_root(out)
    metas = [_read(p) for p in sorted(root.glob(f"*/{DONE}"))]
    if not metas:
        raise InputError(f"{root}: no finished shard to merge (run `workbench score ... --out {out} --shard I/N` first)")
    cfg = AnalysisConfig.from_dict(metas[0]["config"], str(out))
    stamp = _stamp(cfg, metas[0]["count"])
    mine = [m for m in metas if {k: m.get(k) for k in stamp} == json.loads(json.dumps(stamp))]
    missing = sorted(set(range(stamp["count"])) - {m["index"] for m in mine})
    if missing:
        raise InputError(f"{root}: shards {', '.join(map(str, missing))} of {stamp['count']} are not finished for "
                         "this run (or ran another config, data or checkpoints); run them, then merge again")
    records = read_jsonl(cfg.data, cfg.limit, fmt=cfg.answers)
    encoded = encode_records(cfg, records)  # text or vision-language, as run_analysis encodes them
    _, graph = resolve_labels(cfg, records)
    _, infos, _, _ = plan_series(cfg.base, cfg.checkpoints, cfg.device, cfg.dtype)
    folders = [root / f"{i}-of-{stamp['count']}" for i in range(stamp["count"])]
    files = {name: [p for f in folders if (p := f / f"{name}.parquet").is_file()] for name in SHARD_TABLES}
    # beside the shards (on out's disk, so that save links), not inside them: the shards go once saved
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.merge-", dir=root.parent))
    try:
        return assemble_parts(cfg, records, encoded, graph, _parts(files["tokens"]), _parts(files["beliefs"]),
                              branch_starts(infos), staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _parts(paths: list[Path]) -> Iterator[pa.Table]:
    for path in paths:
        yield from trajectory_slices(path)


def trajectory_slices(path: Path, rows: int | None = None) -> Iterator[pa.Table]:
    """A table stored sorted by trajectory (a shard's: ``SortedByTrajectory``'s row groups) as slices of whole
    trajectories of about ``rows`` rows (PART_ROWS), read a row group at a time: memory holds a slice, one
    trajectory and one row group."""
    import pyarrow.compute as pc

    rows = rows or PART_ROWS
    file = pq.ParquetFile(path)
    carry, last = None, None
    for g in range(file.num_row_groups):
        table = file.read_row_group(g)
        if not table.num_rows:
            continue
        if not _sorted(table["traj_id"], last):
            raise InputError(f"{path}: rows not sorted by trajectory (a shard written by an older version); "
                             "run that shard again (its scores come from the cache), then merge")
        last = table["traj_id"][-1].as_py()
        table = pa.concat_tables([carry, table]) if carry is not None else table
        if table.num_rows < rows:
            carry = table
            continue
        cut = pc.index(table["traj_id"], last).as_py()  # the last trajectory may go on in the next row group
        if cut:
            yield table.slice(0, cut)
        carry = table.slice(cut)
    if carry is not None and carry.num_rows:
        yield carry


def _sorted(ids: pa.ChunkedArray, before: str | None) -> bool:
    """Whether ``ids`` are in order and none comes before ``before`` (the previous row group's last)."""
    import pyarrow.compute as pc

    ids = ids.combine_chunks()
    ok = len(ids) < 2 or pc.all(pc.greater_equal(ids.slice(1), ids.slice(0, len(ids) - 1))).as_py()
    return ok and (before is None or ids[0].as_py() >= before)


def _order(df: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """Rows as one process writes them: checkpoint-major in series order, trajectories in ``ids`` order, each
    trajectory's rows in their stored order (by position)."""
    if df.empty:
        return df
    checkpoints = {c: i for i, c in enumerate(pd.unique(df["checkpoint"]))}  # each shard's table is in series order
    rank = {t: i for i, t in enumerate(ids)}
    key = df["checkpoint"].map(checkpoints).to_numpy() * len(ids) + df["traj_id"].map(rank).to_numpy()
    return df.iloc[key.argsort(kind="stable")].reset_index(drop=True)


def remove(out: str | Path) -> None:
    """The shard folder, once its merge is saved (everything in it was written by the shards)."""
    shutil.rmtree(shard_root(out), ignore_errors=True)


# Perturbation runs (``workbench perturb ... --shard I/N``): one result file per shard, rows merged in the order
# one process writes them. The stamp adds the swap (find, replace, mode) to the run's identity.

def rows_stamp(cfg: AnalysisConfig, count: int, **swap) -> dict:
    return json.loads(json.dumps({**_stamp(cfg, count), "swap": swap}))


def write_rows(df: pd.DataFrame, out: str | Path, shard: Shard, stamp: dict) -> Path:
    """One shard's perturbation rows, then its record (the shard is complete)."""
    root = shard_root(out)
    write_parquet(df, root / f"{shard.name}.parquet")
    atomic_write_text(root / f"{shard.name}.json", json.dumps({**stamp, "index": shard.index}, indent=1))
    return root / f"{shard.name}.parquet"


def rows_finished(out: str | Path, stamp: dict) -> list[int]:
    metas = [_read(p) for p in shard_root(out).glob(f"*-of-{stamp['count']}.json")]
    return sorted(m["index"] for m in metas if {k: m.get(k) for k in stamp} == stamp)


def wait_for_rows(out: str | Path, stamp: dict, poll: float = 5.0) -> None:
    while len(rows_finished(out, stamp)) < stamp["count"]:
        time.sleep(poll)


def merge_rows(out: str | Path) -> pd.DataFrame:
    """Every shard's perturbation rows, ordered as one process orders them (core.perturb.text.perturbation_test)."""
    root = shard_root(out)
    metas = [_read(p) for p in sorted(root.glob("*-of-*.json"))]
    if not metas:
        raise InputError(f"{root}: no finished shard to merge (run `workbench perturb ... --out {out} --shard I/N` first)")
    cfg = AnalysisConfig.from_dict(metas[0]["config"], str(out))
    stamp = rows_stamp(cfg, metas[0]["count"], **metas[0]["swap"])
    missing = sorted(set(range(stamp["count"])) - set(rows_finished(out, stamp)))
    if missing:
        raise InputError(f"{root}: shards {', '.join(map(str, missing))} of {stamp['count']} are not finished for "
                         "this run (or ran another swap, config, data or checkpoints); run them, then merge again")
    df = pd.concat([pd.read_parquet(root / f"{i}-of-{stamp['count']}.parquet") for i in range(stamp["count"])],
                   ignore_index=True)
    if stamp["swap"].get("mode") == "probe":
        return df.sort_values(["step", "traj_id"]).reset_index(drop=True)
    return _order(df, [r["id"] for r in read_jsonl(cfg.data, cfg.limit, fmt=cfg.answers)])
