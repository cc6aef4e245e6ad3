"""Region occlusion's cost on CPU: the workbench (``core.perturb.visual``: 16 occluded variants per forward, their
image features computed once per batch and shared by every LoRA checkpoint) vs one variant per forward with
the vision tower run again under each checkpoint (what a loop over variants does). Prints seconds per study
x checkpoint and the ratio (best of two interleaved runs each); asserts no timing.

Full size: the tiny Qwen2.5-VL world (``tests/vl_world.py``: base + 2 LoRA checkpoints), 3 studies whose
images are 448 x 448 (256 image tokens each, ``max_pixels`` 448*448), an 8 x 8 grid (64 variants + the
original per study).
"""

import dataclasses
import time

import pytest
import torch
from PIL import Image

from core.perturb import visual, visual_probe
from core.workspace.world import load_world
from tests.vl_world import make_vl_world

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]


def test_occlusion_cost(tmp_path, size):
    torch.set_num_threads(2)
    world = load_world(make_vl_world(tmp_path, n_records=4))
    side = size(448, 112)
    for path in (tmp_path / "MIMIC-CXR").rglob("*.jpg"):  # X-ray-sized inputs for the image tokens
        Image.open(path).convert("RGB").resize((side, side)).save(path)
    cfg = visual.VisualConfig.from_world(world, kind="occlusion", device="cpu", grid=size(8, 2), limit=size(3, 1),
                                         max_pixels=side * side, batch_size=16)
    vs = visual_probe.load_series(cfg)
    ways = {"workbench": (cfg, vs), "one variant per forward": (dataclasses.replace(cfg, batch_size=1),
                                                               dataclasses.replace(vs, shared_inputs=False))}
    timings = {name: float("inf") for name in ways}
    visual_probe.run(dataclasses.replace(cfg, limit=1, grid=1), series=vs)  # warm-up
    for _ in range(size(2, 1)):  # interleaved, the best of each: a shared machine's load varies
        for name, (run_cfg, series) in ways.items():
            t0 = time.perf_counter()
            df = visual_probe.run(run_cfg, series=series)
            timings[name] = min(timings[name], time.perf_counter() - t0)
    n_studies, k = df["traj_id"].nunique(), len(vs.names)
    variants = cfg.grid ** 2
    print(f"\nregion occlusion{size.header()}: {n_studies} studies x {k} checkpoints, {variants} variants each, "
          f"{side}x{side} images ({side * side // 28 // 28} image tokens)")
    for name, s in timings.items():
        print(f"  {name:26s} {s:7.2f} s   {s / (n_studies * k):6.2f} s per study x checkpoint")
    print(f"  ratio: {timings['one variant per forward'] / timings['workbench']:.1f}x")
