"""The scoring and probe tables of an analysis, stored in parts per batch of trajectories and per checkpoint.

``core.drift.analysis.run_analysis`` computes its two expensive tables through ``scores`` and ``beliefs``: each part
(a batch of trajectories under one checkpoint) is written to the workspace cache as soon as it is computed, keyed
by what its rows depend on, so that a cancelled run resumes at the first missing part and a checkpoint added to a
scored analysis (a CPO run joining it) is computed alone:

    marks = checkpoint_marks(base, infos, dtype)             # per checkpoint: name, step, its files' fingerprint
    paths = scores(get_series, encoded, scfg, cache, token_keys(marks, parents, *common), parents, ...)
    paths[b]                                                  # batch b's part files, one per checkpoint in order
"""

from __future__ import annotations

from pathlib import Path

from core.drift.probe import ProbeConfig, probe
from core.drift.scoring import ScoreConfig, batch_plan, score_batches
from core.io.cache import cache_key, part_name, stored_grid
from core.models.series import BASE, ModelSeries, adapter_name, series_fingerprint

PROBE_PART = 16  # trajectories per stored part of the beliefs table


# The cache is keyed per checkpoint: a checkpoint's rows depend on its own weights (and, for the scores, the
# base's and its parent's: KL to them), never on which other checkpoints share the series. Adding a checkpoint
# (a CPO run joining an analysis) computes that checkpoint alone; the others' parts are read back.

def checkpoint_marks(base: Path, infos: list, dtype) -> dict[str, tuple]:
    """Series name -> what its rows are keyed by: its name and step, and the fingerprint of the base's and its
    own files (``series_fingerprint`` of the base and that one checkpoint)."""
    marks = {BASE: (BASE, 0, series_fingerprint(base, [], dtype))}
    for c in infos:
        marks[adapter_name(c)] = (adapter_name(c), c.step, series_fingerprint(base, [c], dtype))
    return marks


def token_keys(marks: dict[str, tuple], parents: dict[str, str], *common) -> dict[str, str]:
    """The scoring cache key of each checkpoint: its mark, and its parent's (``kl_prev`` is measured to it)."""
    return {n: cache_key(*common, mark, marks[parents[n]] if n in parents else None) for n, mark in marks.items()}


class _Only:
    """A series seen through some of its checkpoint names (what scoring and the probe iterate): the rest of it
    is the series' own. ``measured``: the names whose rows are kept; the others are there as references (the
    base, a parent) and are measured against the base, their rows thrown away."""

    def __init__(self, series: ModelSeries, names: set[str], measured: set[str]):
        self._series = series
        self.names = [n for n in series.names if n in names]
        self.checkpoints = [c for c in series.checkpoints if adapter_name(c) in names]
        full = series.parents
        self.parents = {n: full[n] if n in measured else self.names[0] for n in self.names[1:]}

    def __getattr__(self, name: str):
        return getattr(self._series, name)


def scores(get_series, encoded, scfg: ScoreConfig, cache_dir, keys: dict[str, str], parents: dict[str, str],
            progress, should_cancel, scratch: Path) -> list[list[Path]]:
    """``score``'s table, stored per batch and checkpoint as it is computed (a rerun resumes at the first missing
    batch; a new checkpoint is scored alone, with the base and its parent as references): per batch, the paths
    of its rows under each checkpoint in series order."""
    names = [part_name(encoded[i].id for i in idx) for idx in batch_plan(encoded, scfg)]

    def compute(missing: dict[str, set[str]]):
        wanted = set().union(*missing.values())
        needed = {BASE, *missing, *(parents[n] for n in missing if n in parents)}
        series = _Only(get_series(), needed, set(missing))
        for idx, frame in score_batches(series, encoded, scfg, progress, should_cancel,
                                        skip=lambda ids: part_name(ids) not in wanted):
            name = part_name(encoded[i].id for i in idx)
            for checkpoint in (c for c in series.names if name in missing.get(c, ())):
                yield checkpoint, name, frame[frame["checkpoint"] == checkpoint].reset_index(drop=True)

    return stored_grid(cache_dir, "tokens", keys, names, compute, scratch)


def beliefs(get_series, encoded, pcfg: ProbeConfig, cache_dir, keys: dict[str, str], progress, should_cancel,
             scratch: Path) -> list[list[Path]]:
    """``probe``'s table, stored PROBE_PART trajectories at a time per checkpoint, only the missing checkpoints
    probed: per part, the paths of its rows under each checkpoint in series order."""
    slices = [encoded[a: a + PROBE_PART] for a in range(0, len(encoded), PROBE_PART)]
    names = [part_name(e.id for e in part) for part in slices]

    def compute(missing: dict[str, set[str]]):
        todo = [(n, part) for n, part in zip(names, slices, strict=True) if any(n in m for m in missing.values())]
        for k, (name, part) in enumerate(todo):
            sub = (lambda d, t, m, k=k: progress(k + d / max(t, 1e-12), len(todo), m)) if progress else None
            lacking = {c for c, m in missing.items() if name in m}
            frame = probe(_Only(get_series(), lacking, lacking), part, pcfg, sub, should_cancel)
            for checkpoint in (c for c in get_series().names if c in lacking):
                yield checkpoint, name, frame[frame["checkpoint"] == checkpoint].reset_index(drop=True)

    return stored_grid(cache_dir, "beliefs", keys, names, compute, scratch)


class Remembered:
    """A progress callback that remembers the fraction last reported (``done``), so that a message about what
    the run does next (loading the model) keeps the bar where it is. ``Remembered(None)`` is None."""

    def __new__(cls, progress):
        return None if progress is None else super().__new__(cls)

    def __init__(self, progress):
        self.progress, self.done = progress, 0.0

    def __call__(self, done: float, total: float, message: str) -> None:
        if not message.startswith("warning: "):
            self.done = done / max(total, 1e-12)
        self.progress(done, total, message)
