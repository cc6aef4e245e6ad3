"""The CPO wing's background job: a run trained from its ``TrainConfig`` (kind ``train`` of ``core.jobs.registry``),
then, with ``evaluate``, its held-out figures (``core.cpo.runs.evaluate_adapter``); with ``evaluate_limit`` (the first N
studies) also its start's on those same N (``start_figures``, cached per start, N and data), which Compare shows as
the run's "before" row.

    run_train(cfg, TrainOptions(evaluate="sample_data"), progress, should_cancel)   # core.jobs.worker train
    accelerate launch -m core.jobs.worker train --config run.json                  # each process runs this

Light to import (torch and TRL load when a run starts).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from core.cpo.config import TrainConfig, TrainOptions
from core.errors import InputError
from core.progress import CANCELLED, Progress


def run_train(cfg: TrainConfig, options: TrainOptions, progress: Progress | None = None, should_cancel=None) -> int:
    """A CPO run from ``cfg``, then, with ``options.evaluate`` (a world), its held-out figures. Under ``accelerate
    launch`` each process runs this, and TRL's Trainer shards the batches. Cancel (``should_cancel``) saves the
    adapter at the next step end and stops."""
    from core.cpo import runs
    from core.cpo import train as cpo
    from core.models.vision import VisionConfig

    try:
        result = cpo.train(cfg, progress=progress, should_cancel=should_cancel)
    except RuntimeError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 1
    print(f"workbench: {'cancelled' if result.cancelled else 'finished'} at step {result.steps}; "
          f"adapter in {result.adapter_dir}, metrics in {result.metrics_path}")
    if result.cancelled:
        return CANCELLED
    if options.evaluate:  # the held-out figures the runs page compares (core.cpo.runs)
        if progress:
            progress(1, 1, "evaluating on the held-out sets")
        # the run's pixel limits: a VL run is evaluated at the resolution it was trained at (text: unused)
        evaluation = runs.evaluate_adapter(options.evaluate, result.adapter_dir, options.evaluate_limit,
                                           VisionConfig.of(cfg), base=cfg.base_model)  # the adapter's own base
        if evaluation is None:
            print(f"workbench: {options.evaluate} has no held-out set (world.json: evaluation); not evaluated")
            return 0
        if options.evaluate_limit:  # not comparable with full-set figures: the start on the same N studies is
            # evaluated too; the run's own figures are written first, so they stand whatever befalls the start's
            runs.write_evaluation(cfg.output_dir, {**evaluation, "held_out_limit": options.evaluate_limit})
            evaluation.update(_start_on_the_same_studies(cfg, options, progress))
        path = runs.write_evaluation(cfg.output_dir, evaluation)
        print("workbench: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation.items() if isinstance(v, float))
              + f" (in {path})")
    return 0


def _start_on_the_same_studies(cfg: TrainConfig, options: TrainOptions, progress: Progress | None) -> dict:
    """What a run evaluated on the first N studies keeps beside its figures: N, which studies, and its start's
    figures on those same N (``start_figures``, cached), so Compare has its "before" row."""
    from core.cpo import starts
    from core.models.vision import VisionConfig

    out = {"held_out_limit": options.evaluate_limit}
    name = starts.start_name(options.evaluate, cfg.to_dict())
    if progress:
        progress(1, 1, f"evaluating the start ({name}) on the same {options.evaluate_limit} studies")
    try:
        start = start_figures(options.evaluate, cfg.base_model, cfg.init_adapter, options.evaluate_limit,
                              VisionConfig.of(cfg), options.evaluate_cache, name)
    except Exception as e:  # noqa: BLE001 - a bad file, out of memory, a model error: the run's figures stand and
        why = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"  # Compare says its start row is missing
        print(f"workbench: warning: the start ({name}) was not evaluated on the same studies: {why}", file=sys.stderr)
        return out
    if start:
        out |= {"held_out_span": start.get("held_out_span"), starts.START_FIGURES: start}
    return out


def start_figures(world_path: str | Path, base: str | Path, adapter: str | Path | None, limit: int, vision=None,
                  cache_dir: str | Path | None = None, name: str = "base (SFT)") -> dict | None:
    """The held-out figures of a run's start (``base``, with ``adapter`` when it continues one; ``name``: the
    start's name) on the first ``limit`` studies, the studies the run is evaluated on; None when the world has no
    held-out set. Cached in ``cache_dir`` per (start, N, data): runs from one start evaluated on the same N
    decode the start once. ``held_out_span`` names the first and last study."""
    from core.atomic import atomic_write_text
    from core.cpo import runs
    from core.perturb.evaluation import held_out
    from core.workspace.world import load_world

    held = held_out(load_world(world_path), limit)
    if held is None or not held.records:
        return None
    key = _start_key(base, adapter, limit, vision, held)
    path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # an unreadable cache entry: evaluated again, and replaced
    figures = runs.evaluate_adapter(world_path, adapter, limit, vision, base=base)
    span = held.records[0]["id"] if len(held.records) == 1 else f"{held.records[0]['id']} … {held.records[-1]['id']}"
    figures = {**figures, "checkpoint": name, "held_out_limit": limit, "held_out_span": span}
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(figures, indent=1))
    return figures


def _start_key(base, adapter, limit: int, vision, held) -> str:
    """What the start's figures depend on: its model files (path, size, time), N, the pixel limits, the studies."""
    def files(folder) -> list:
        folder = Path(folder).resolve()
        return [str(folder)] + [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())
                                if f.is_file()]
    studies_ = [[r.get(k) for k in ("id", "prompt", "completion", "label", "images", "chat", "source_id")]
                for r in held.records + held.perturbed]
    data = {"base": files(base), "adapter": files(adapter) if adapter else None, "limit": limit,
            "vision": repr(vision), "studies": studies_}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]
