"""The drift wing's background job: an analysis scored into its folder (kind ``score`` of ``core.jobs.registry``).

    run_score(cfg, ScoreOptions(out="out/"), progress, should_cancel)     # what ``core.jobs.worker score`` runs
    run_score(cfg, ScoreOptions(out="out/", shard="0/2"))                   # one shard; then merge=True

Light to import (the analysis and torch load when a job runs): the worker's and the command line's flags come
from ``ScoreOptions``' fields.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from core.config import ConfigBase
from core.io.paths import expand, expand_fields
from core.progress import Progress

if TYPE_CHECKING:
    from core.drift.config import AnalysisConfig

SHARD_HELP = ("only shard I of N (0-based) of the trajectories, into a folder beside --out; then --merge. Under "
              "`accelerate launch` each process takes its RANK/WORLD_SIZE, and rank 0 merges by itself")


@dataclass
class ScoreOptions(ConfigBase):
    """Where a scoring job writes and how it runs (flags beside its ``AnalysisConfig``)."""

    what: ClassVar[str] = "scoring options"

    out: str = field(metadata={"help": "the analysis folder for the parquet tables and config.json (new or empty; "
                                       "a previous analysis is replaced only with --force, other files never)",
                               "path": True})
    force: bool = field(default=False, metadata={"help": "replace the previous analysis in --out"})
    workspace: str | None = field(default=None, metadata={"help": "the workspace whose cache/ keeps results for a "
                                                                  "second run", "path": True})
    cache: bool = field(default=True, metadata={"help": "keep and reuse the scoring and probe tables in the "
                                                        "workspace's cache (--no-cache: neither)"})
    shard: str | None = field(default=None, metadata={"help": SHARD_HELP, "metavar": "I/N"})
    merge: bool = field(default=False, metadata={"help": "merge the finished shards of --out into one analysis "
                                                         "(their config is used)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        expand_fields(self)


def run_score(cfg: AnalysisConfig | None, options: ScoreOptions, progress: Progress | None = None,
              should_cancel=None) -> int:
    """Score ``cfg`` into the analysis folder ``options.out``; prints the summary. With ``options.shard`` ("I/N",
    or RANK / WORLD_SIZE under ``accelerate launch``) only that share of the trajectories, into a folder beside
    it (``core.drift.shards``); ``options.merge`` builds the analysis from the finished shards (``cfg`` unused)."""
    from core.drift import shards
    from core.drift.analysis import run_analysis
    from core.io.outputs import check_analysis_folder

    out = expand(options.out)
    part = None if options.merge else shards.Shard.parse(options.shard) if options.shard else shards.Shard.from_env()
    check_analysis_folder(out, options.force)  # before the compute: a refusal costs nothing
    if part is None:  # one process writes the folder (shards write folders of their own beside it, at once)
        return _locked(out, lambda: save_analysis(shards.merge(out), out, merged=True) if options.merge else
                       save_analysis(run_analysis(cfg, cache_dir=_cache_dir(options), progress=progress,
                                                  should_cancel=should_cancel), out))
    return _score_shard(cfg, part, bool(options.shard), out, _cache_dir(options), progress, should_cancel)


def _locked(out: Path, work) -> int:
    """``work()`` while this process holds the analysis folder ``out`` (created empty if new): two tabs pressing
    Score at once, the second is refused by name. The lock is on the folder itself (no lock file in it or beside
    it); a new folder left empty by a failure goes again."""
    import os

    from core.io.locks import lock_dir

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = lock_dir(out, "analysis folder")
    try:
        return work()
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        os.close(fd)


def _cache_dir(options: ScoreOptions) -> Path | None:
    if not options.cache:
        return None
    from core.workspace.workspace import Workspace

    ws = Workspace.open(options.workspace)
    if ws.store.notice:
        print(f"workbench: warning: {ws.store.notice}", file=sys.stderr)
    return ws.cache_dir


def _score_shard(cfg, part, explicit: bool, out: Path, cache, progress, should_cancel) -> int:
    """One shard into its folder; under accelerate (no explicit shard), rank 0 then waits for the others and merges."""
    from core.drift import shards

    if not explicit:
        own_gpu(cfg)
    folder = shards.run_shard(cfg, part, out, cache, progress, should_cancel)
    print(f"\nworkbench: shard {part.index}/{part.count} written to {folder}", file=sys.stderr)
    if explicit or part.index != 0:
        if explicit:
            print(f"workbench: when all {part.count} shards are done: workbench score --merge --out {out}")
        return 0
    shards.wait_for(out, cfg, part.count, progress)
    return save_analysis(shards.merge(out), out, merged=True)


def own_gpu(cfg) -> None:
    """Under accelerate / torchrun, one GPU per process: "cuda" means this process's own (LOCAL_RANK)."""
    if os.environ.get("LOCAL_RANK") and cfg.device in (None, "cuda"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())


def save_analysis(result, out: Path, merged: bool = False) -> int:
    """Write ``result`` into ``out`` (a full disk named), print its summary and what was written."""
    from core.drift import shards
    from core.drift.probe import NO_LABELS
    from core.io.outputs import disk_full_named

    with disk_full_named(out):
        folder = result.save(out)
    if merged:
        shards.remove(out)  # saved: the shard folders are no longer needed
    print(result.summary.round(4).to_string(index=False))
    if not result.probed:
        print(f"workbench: note: {NO_LABELS}")
    print(f"workbench: wrote {', '.join(f.name for f in sorted(folder.glob('*')))} to {folder}")
    return 0
