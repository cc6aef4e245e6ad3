"""The perturbation wing's background jobs (kinds ``perturb`` and ``visual`` of ``core.jobs.registry``).

    run_perturb(cfg, PerturbOptions(find="opacity", replace="shadow", out="pairs.parquet"), progress, should_cancel)
    run_visual(visual_cfg, VisualOptions(out="swap.parquet"), progress, should_cancel)

Light to import (models and torch load when a job runs).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from core.config import ConfigBase
from core.drift.job import SHARD_HELP, own_gpu
from core.errors import InputError
from core.io.paths import expand, expand_fields
from core.progress import Progress

if TYPE_CHECKING:
    from core.drift.config import AnalysisConfig
    from core.perturb.visual import VisualConfig

MODES = ("generate", "probe")


@dataclass
class PerturbOptions(ConfigBase):
    """The span swap of a perturbation job and where its rows go (flags beside its ``AnalysisConfig``)."""

    what: ClassVar[str] = "perturbation options"

    out: str = field(metadata={"help": "parquet file for the per-trajectory rows (a new file; a previous result is "
                                       "replaced only with --force, other files never)", "path": True})
    find: str = field(default="", metadata={"help": 'the span to replace, e.g. "consolidation" (required but '
                                                    "with --merge)"})
    replace: str = field(default="", metadata={"help": 'its replacement, e.g. "airspace opacity"'})
    mode: str = field(default="generate", metadata={
        "help": "generate: the model writes its own CoT; probe: the CoT is teacher-forced", "choices": MODES})
    force: bool = field(default=False, metadata={"help": "replace the previous result in --out"})
    shard: str | None = field(default=None, metadata={"help": SHARD_HELP, "metavar": "I/N"})
    merge: bool = field(default=False, metadata={"help": "merge the finished shards of --out into one result file"})

    def __post_init__(self) -> None:
        super().__post_init__()
        expand_fields(self)


@dataclass
class VisualOptions(ConfigBase):
    """Where a visual-drift job writes (a flag beside its ``VisualConfig``)."""

    what: ClassVar[str] = "visual-drift options"

    out: str = field(metadata={"help": "parquet file (new; a previous result is replaced only with --force)",
                               "path": True})
    force: bool = field(default=False, metadata={"help": "replace a previous result in --out"})

    def __post_init__(self) -> None:
        super().__post_init__()
        expand_fields(self)


def run_perturb(cfg: AnalysisConfig | None, options: PerturbOptions, progress: Progress | None = None,
                should_cancel=None) -> int:
    """Swap ``options.find`` for ``options.replace`` in every trajectory of ``cfg``'s data; answers before/after per
    checkpoint into ``options.out``. ``shard`` / ``merge`` as for scoring (``core.drift.job``)."""
    from core.drift import shards
    from core.drift.analysis import resolve_labels
    from core.io.outputs import PERTURB_COLUMNS, check_result_file
    from core.io.trajectories import read_jsonl
    from core.models.series import load_series
    from core.perturb.text import perturbation_test

    out, o = expand(options.out), options
    check_result_file(out, o.force, PERTURB_COLUMNS)
    if o.merge:
        return _write_perturbation(shards.merge_rows(out), out, merged=True)
    if not (o.find or "").strip():
        raise InputError("perturb: --find must name a non-empty span")
    part = shards.Shard.parse(o.shard) if o.shard else shards.Shard.from_env()
    records = read_jsonl(cfg.data, cfg.limit, fmt=cfg.answers)  # unlabelled records: the answer they give
    labels, _ = resolve_labels(cfg, records)  # the whole data's labels, also in a shard
    records = part.take(records) if part else records
    if part and not o.shard:
        own_gpu(cfg)
    if progress:
        progress(0, 1, "loading the checkpoint series")
    series = load_series(cfg.base, cfg.checkpoints, device=cfg.device, dtype=cfg.dtype, base_names=cfg.base_names,
                         vision=cfg.vision, trust_remote_code=cfg.trust_remote_code)  # a VL base: the pixel limits
    df = perturbation_test(series, records, o.find, o.replace, labels, mode=o.mode, progress=progress,
                           should_cancel=should_cancel, chat_template=cfg.chat_template,
                           template=cfg.template)  # the analysis's answer template, as its probe
    if part is not None:
        stamp = shards.rows_stamp(cfg, part.count, find=o.find, replace=o.replace, mode=o.mode)
        print(f"workbench: shard {part.index}/{part.count} written to {shards.write_rows(df, out, part, stamp)}",
              file=sys.stderr)
        if o.shard or part.index != 0:
            if o.shard:
                print(f"workbench: when all {part.count} shards are done: workbench perturb --merge --out {out}")
            return 0
        shards.wait_for_rows(out, stamp)
        return _write_perturbation(shards.merge_rows(out), out, merged=True)
    if df.empty:
        raise InputError(f"perturb: no trajectory in {cfg.data} contains {o.find!r}")
    return _write_perturbation(df, out)


def _write_perturbation(df, out: Path, merged: bool = False) -> int:
    from core.drift import shards
    from core.io.cache import write_parquet
    from core.io.outputs import disk_full_named
    from core.perturb.text import perturbation_summary

    if df.empty:
        raise InputError(f"perturb: no trajectory of the data contains the span; nothing written to {out}")
    with disk_full_named(out):
        write_parquet(df, out)
    if merged:
        shards.remove(out)
    print(perturbation_summary(df).round(4).to_string(index=False))
    print(f"workbench: wrote {len(df)} rows to {out}")
    return 0


def run_visual(cfg: VisualConfig, options: VisualOptions, progress: Progress | None = None,
               should_cancel=None) -> int:
    """Image swap or region occlusion (``cfg``) into the parquet file ``options.out`` and its sidecar."""
    from core.io.outputs import disk_full_named
    from core.perturb import visual, visual_probe

    out = expand(options.out)
    visual.check_output(out, options.force, cfg.kind)
    df = visual_probe.run(cfg, progress=progress, should_cancel=should_cancel)
    with disk_full_named(out):
        visual.write_result(df, cfg, out)
    if cfg.kind == "swap":
        print(visual.swap_flip_rates(df).round(4).to_string(index=False))
    print(f"workbench: wrote {len(df)} rows to {out}")
    return 0
