"""The visual-drift figures, built from known tables: flip-rate lines per category over the steps, and the
occlusion heatmap laid over the image in its pixel coordinates with one heatmap per checkpoint."""

import numpy as np
import pandas as pd

from core.perturb.visual import grid_boxes
from workbench.visual_charts import (
    occlusion_heatmap,
    swap_belief_paths,
    swap_flip_chart,
)


def test_flip_chart_has_one_line_per_category_over_the_steps():
    rates = pd.DataFrame({"category": ["Edema", "Edema", "Pneumonia", "Pneumonia"],
                          "checkpoint": ["ck-4", "base", "base", "ck-4"], "step": [4, 0, 0, 4],
                          "n": [3, 3, 2, 2], "flip_rate": [0.5, 0.0, 1.0, 0.25], "follows_image": [0.1] * 4})
    fig = swap_flip_chart(rates)
    assert [t.name for t in fig.data] == ["Edema", "Pneumonia"]
    assert list(fig.data[0].x) == [0, 4] and list(fig.data[0].y) == [0.0, 0.5]  # sorted by step
    assert list(fig.data[1].y) == [1.0, 0.25]


def occlusion_rows(w: int, h: int, n: int) -> pd.DataFrame:
    rows = []
    for step, name in ((0, "base"), (4, "checkpoint-4")):
        for k, (x0, y0, x1, y1) in enumerate(grid_boxes(w, h, n)):
            for label in ("Edema", "Pneumonia"):
                drop = (k + 1) * (1 if label == "Edema" else -1) * (step + 1) / 100
                rows.append({"traj_id": "s", "checkpoint": name, "step": step, "patch": k, "row": k // n,
                             "col": k % n, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "label": label, "drop": drop})
    return pd.DataFrame(rows)


def test_occlusion_heatmap_covers_the_image_per_patch_and_checkpoint():
    image = np.zeros((90, 60, 3), dtype=np.uint8)
    fig = occlusion_heatmap(image, occlusion_rows(60, 90, 3), "Edema")
    assert [t.type for t in fig.data] == ["image", "heatmap", "heatmap"]
    base, late = fig.data[1], fig.data[2]
    assert list(base.x) == [0, 20, 40, 60] and list(base.y) == [0, 30, 60, 90]  # patch edges in pixels
    np.testing.assert_allclose(base.z, np.arange(1, 10).reshape(3, 3))  # row by row, as the patches; in points
    np.testing.assert_allclose(late.z, 5 * np.arange(1, 10).reshape(3, 3))
    assert base.zmax == late.zmax == 45 and base.zmin == -45  # one scale for every checkpoint
    assert base.visible and not late.visible
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["base", "checkpoint-4"]
    assert steps[1].args[0]["visible"] == [True, False, True]  # the image stays, one heatmap at a time
    assert list(fig.layout.yaxis.range) == [90, 0]  # image rows downwards


def test_a_single_rectangle_is_one_cell_at_its_place():
    rows = occlusion_rows(60, 90, 1).assign(x0=10, y0=20, x1=30, y1=50)
    fig = occlusion_heatmap(np.zeros((90, 60, 3), dtype=np.uint8), rows, "Pneumonia")
    assert list(fig.data[1].x) == [10, 30] and list(fig.data[1].y) == [20, 50]
    np.testing.assert_allclose(fig.data[1].z, [[-1.0]])


def test_a_tiny_occlusion_effect_stays_pale_instead_of_filling_the_colour_scale():
    rows = occlusion_rows(60, 90, 2).assign(drop=lambda d: d["drop"] / 1000)  # drops of about 1e-4
    fig = occlusion_heatmap(np.zeros((90, 60, 3), dtype=np.uint8), rows, "Edema")
    assert fig.data[1].zmax == 1.0 and abs(fig.data[1].z).max() < 0.1  # under a tenth of the scale: pale


def test_swap_belief_paths_draw_own_and_swapped_image_per_checkpoint():
    rows = pd.DataFrame({"checkpoint": ["ck-2", "ck-2", "base", "base"], "step": [2, 2, 0, 0],
                         "position": [9, 3, 3, 9], "gold": "Edema", "belief_before": [0.7, 0.6, 0.5, 0.4],
                         "belief_original": [0.1, 0.2, 0.3, 0.35]})
    fig = swap_belief_paths(rows)
    assert [t.name for t in fig.data] == ["base · own image", "base · swapped", "ck-2 · own image", "ck-2 · swapped"]
    assert list(fig.data[2].x) == [3, 9] and list(fig.data[2].y) == [0.6, 0.7]  # along the CoT
    assert list(fig.data[3].y) == [0.2, 0.1] and fig.data[3].line.dash == "dash"
    assert fig.layout.yaxis.title.text == "P(Edema)"
