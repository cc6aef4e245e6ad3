"""Where a CPO run starts and how its held-out figures compare with that start: the checkpoint it repairs (an
adapter it continues, a merged full checkpoint it takes as its base, or the base itself), that start's recorded
figures (the world's metrics.json), the comparison table and what it says when the start row is missing.

    base_model, init_adapter = start_point(world, "checkpoint-160")
    comparison(finished_runs, start_metrics(world.root, None, start_name(world.root, run.config)))

A run evaluated on the first N held-out studies (``evaluate_limit``) is compared with its start on the same N:
the training job evaluates the start there too (``core.cpo.job.start_figures``, cached per start, N and data) and keeps the
figures in the run's evaluation (``START_FIGURES``); the world's recorded figures cover the whole set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from core.errors import InputError


START_BASE = "base (SFT)"  # a run's start when it trains the base model itself, not a drifted checkpoint
START_FIGURES = "start"  # in a run's evaluation: its start's figures on the same first N studies
STUDIES = "held-out studies"  # the comparison's column saying which studies a row was evaluated on


def default_start(world) -> str | None:
    """The checkpoint a repair run starts from by default: the world's least accurate recorded one."""
    names = {c.name for c in world.checkpoints}
    recorded = [m for m in world.metrics() if m.get("checkpoint") in names]
    return min(recorded, key=lambda m: m.get("accuracy", 1.0))["checkpoint"] if recorded else None


def start_adapter(world, start: str) -> str | None:
    """The adapter a run starting from ``start`` continues (None for ``START_BASE`` and for a merged full
    checkpoint, which is the run's base instead: ``start_point``)."""
    return start_point(world, start)[1]


def start_point(world, start: str) -> tuple[str, str | None]:
    """(base model, adapter to continue) of a run starting from ``start``: the world's base and the checkpoint's
    LoRA adapter; the world's base alone for ``START_BASE``; a merged full checkpoint (ms-swift's
    ``checkpoint-N-merged``) as the base itself, with a new LoRA over it."""
    if start == START_BASE:
        return str(world.base_model_dir), None
    found = next((c for c in world.checkpoints if c.name == start), None)
    if found is None:
        raise InputError(f"start {start!r}: not a checkpoint of the world {world.name!r}")
    if found.kind == "full":
        return str(found.path), None
    return str(world.base_model_dir), str(found.path)


def comparison(runs: list, before: dict | None = None) -> pd.DataFrame:
    """Finished runs side by side on the held-out sets, each start's row first: ``before`` (the start's recorded
    figures, on the whole sets) when a run was evaluated on all of them, and for runs evaluated on the first N
    studies their start's figures on those same N (``START_FIGURES``). ``STUDIES`` says which studies each row
    covers; ``start_note`` says why a start row is missing."""
    rows = []
    if before and any(not _limit(r) for r in runs if r.evaluation):
        rows.append({"run": "before (start checkpoint)", "objective": "", STUDIES: "all", **before})
    for r in runs:
        start = (r.evaluation or {}).get(START_FIGURES) if _limit(r) else None
        if not start:
            continue
        label = f"before ({start.get('checkpoint', 'start')}, first {_limit(r)})"
        row = {"objective": "", STUDIES: studies(start), **{k: v for k, v in _scalars(start).items() if k != "checkpoint"}}
        same = next((x for x in rows if x["run"] == label), None)
        if same is None:  # runs from one start on one N share its row
            rows.append({"run": label, **row})
        elif _figures(same) != _figures(row):  # that start evaluated again with other figures (another held-out
            rows.append({"run": f"{label[:-1]}, for {r.name})", **row})  # file, other pixel limits): the run's own
    rows += [{"run": r.name, "objective": r.objective, STUDIES: studies(r.evaluation), **_scalars(r.evaluation)}
             for r in runs if r.evaluation]
    return pd.DataFrame(rows)


def _figures(row: dict) -> str:
    """A start row's figures and studies, comparable (NaN equal to NaN)."""
    return json.dumps({k: v for k, v in row.items() if k != "run"}, sort_keys=True, default=str)


def _limit(run) -> int | None:
    return (run.evaluation or {}).get("held_out_limit")


def studies(evaluation: dict) -> str:
    """Which held-out studies figures cover, in words: "all", or "first 8 (study-0 … study-7)"."""
    limit = evaluation.get("held_out_limit")
    if not limit:
        return "all"
    span = evaluation.get("held_out_span")
    return f"first {limit}" + (f" ({span})" if span else "")


def start_note(runs: list, before: dict | None, start: str | None = None) -> str | None:
    """Why the comparison lacks a start row, in words (None when each run has one, or there is no run)."""
    partial = sorted({f"{r.name} ({_limit(r)} studies)" for r in runs
                      if _limit(r) and not r.evaluation.get(START_FIGURES)})
    if not runs:
        return None
    if partial:
        return ("No \"before\" row for " + ", ".join(partial) + ": evaluated on the first studies only, before runs "
                "evaluated their start on the same studies, while the start's recorded figures cover the whole "
                "held-out set; run it again (its start is then evaluated on the same first N), or evaluate on all "
                "of them (N = 0).")
    if before is None and any(not _limit(r) for r in runs if r.evaluation):
        return (f"No \"before\" row: no recorded held-out figures of the start ({start or 'base (SFT)'}) in the world's "
                "metrics.json; record them with `workbench evaluate --world W --record`.")
    return None


# held-out figures where higher is better, and where lower is better (core.perturb.evaluation)
HIGHER_IS_BETTER = ("accuracy", "perturbed_accuracy", "rare_class_accuracy")
LOWER_IS_BETTER = ("flip_rate", "malformed")


def worse_than_start(evaluation: dict | None, before: dict | None, margin: float = 0.0) -> list[str]:
    """Where a finished run's held-out figures are worse than its start checkpoint's, in words
    (``["accuracy 0.527 < 0.587 at the start"]``); empty when it is not, or the figures do not compare
    (no start figures). On the first N studies it compares with the start's figures on those same N."""
    if evaluation and evaluation.get("held_out_limit"):
        before = evaluation.get(START_FIGURES)
    if not evaluation or not before:
        return []
    out = []
    for key in HIGHER_IS_BETTER + LOWER_IS_BETTER:
        after, start = evaluation.get(key), before.get(key)
        if not isinstance(after, (int, float)) or not isinstance(start, (int, float)):
            continue
        lower = key in LOWER_IS_BETTER
        if (after > start + margin) if lower else (after < start - margin):
            out.append(f"{key.replace('_', ' ')} {after:.3f} {'>' if lower else '<'} {start:.3f} at the start")
    return out


def start_name(world_path: str | Path | None, config: dict) -> str:
    """The name of the checkpoint a run (its saved ``config``) starts from: its adapter, the merged full
    checkpoint it took as its base, or the world's base ("base (SFT)")."""
    if config.get("init_adapter"):
        return Path(config["init_adapter"]).name
    base = config.get("base_model")
    if base and world_path:
        from core.workspace.world import load_world

        try:
            if Path(base).resolve() != load_world(world_path).base_model_dir.resolve():
                return Path(base).name
        except InputError:
            pass
    return "base (SFT)"


def start_metrics(world_path: str | Path, init_adapter: str | Path | None, start: str | None = None) -> dict | None:
    """The recorded held-out figures of the checkpoint a run starts from (from the world's metrics.json; ``start``:
    its name, when it is not ``init_adapter``'s, e.g. a merged checkpoint the run took as its base), so the
    comparison has its "before" row without re-evaluating."""
    from core.workspace.world import load_world

    try:
        rows = load_world(world_path).metrics()
    except InputError:
        return None
    name = start or (Path(init_adapter).name if init_adapter else "base (SFT)")
    for row in rows:
        if row.get("checkpoint") == name:
            return {k: v for k, v in _scalars(row).items() if k not in ("checkpoint", "step")}
    return None


def _scalars(evaluation: dict) -> dict:
    """The figures that fit one table row (per-category accuracy stays in the run's evaluation)."""
    return {k: v for k, v in evaluation.items() if not isinstance(v, (dict, list))}
