"""A CPO run joining a scored analysis: the per-checkpoint cache (``core.drift.parts``) vs the whole series again.

The workbench scores the run alone (with the base and its start as references: KL to them) and probes it alone,
reading every other checkpoint's parts back from the workspace cache; the baseline is what a whole-series cache
key cost before: the grown series scored and probed from nothing. Both give bit-identical tables (tested in
tests/unit/drift/test_analysis.py). Prints both times and the ratio; asserts no timing.
"""

import dataclasses
import json
import shutil
import time

import pytest
import torch

from core.drift.analysis import AnalysisConfig, run_analysis

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]


def cpo_run(world, folder, start: str, source: str):
    """A CPO run from ``start``, laid out as core.cpo writes one (its adapter: ``source``'s weights)."""
    run = folder / "runs" / "fix" / "adapter"
    shutil.copytree(world / "rft" / source, run)
    step = int(start.split("-")[1])
    (run / "trainer_state.json").write_text(json.dumps({"global_step": step + 20, "run_steps": 20}))
    (run.parent / "config.json").write_text(json.dumps({"init_adapter": str(world / "rft" / start)}))
    return run


def test_adding_a_cpo_run_to_a_scored_analysis(sample_world, size, tmp_path):
    torch.set_num_threads(2)
    rft = sorted((sample_world / "rft").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    run = cpo_run(sample_world, tmp_path, rft[-2].name, rft[-1].name)
    before = AnalysisConfig.from_world(sample_world, limit=size(40, 6), checkpoints=[str(p) for p in rft])
    grown = dataclasses.replace(before, checkpoints=[*before.checkpoints, str(run)])
    scored = tmp_path / "scored"
    run_analysis(before, cache_dir=scored)  # the analysis the run joins (warm-up too)
    best = {"added": float("inf"), "whole": float("inf")}
    for i in range(size(2, 1)):  # interleaved: this VM's speed drifts between minutes
        cache = tmp_path / f"added-{i}"
        shutil.copytree(scored, cache)
        t = time.perf_counter()
        run_analysis(grown, cache_dir=cache)
        best["added"] = min(best["added"], time.perf_counter() - t)
        t = time.perf_counter()
        run_analysis(grown, cache_dir=tmp_path / f"whole-{i}")
        best["whole"] = min(best["whole"], time.perf_counter() - t)
    print(f"\na CPO run joining an analysis of {len(rft)} checkpoints x {before.limit} trajectories (text sample world, "
          f"probe at every position, CPU, 2 threads){size.header()}:")
    print(f"  per-checkpoint cache, the run alone: {best['added']:6.2f} s")
    print(f"  the grown series from nothing:       {best['whole']:6.2f} s   ratio {best['whole'] / best['added']:.1f}x")
