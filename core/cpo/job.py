"""The CPO wing's background job: a run trained from its ``TrainConfig`` (kind ``train`` of ``core.jobs.registry``),
then, with ``evaluate``, its held-out figures (``core.cpo.runs.evaluate_adapter``).

    run_train(cfg, TrainOptions(evaluate="sample_data"), progress, should_cancel)   # core.jobs.worker train
    accelerate launch -m core.jobs.worker train --config run.json                  # each process runs this

Light to import (torch and TRL load when a run starts).
"""

from __future__ import annotations

import sys
from core.cpo.config import TrainConfig, TrainOptions
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
        if options.evaluate_limit:
            evaluation["held_out_limit"] = options.evaluate_limit  # not comparable with full-set figures
        path = runs.write_evaluation(cfg.output_dir, evaluation)
        print("workbench: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation.items() if isinstance(v, float))
              + f" (in {path})")
    return 0
