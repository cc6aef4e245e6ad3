"""Chart builders for visual drift (``core.perturb.visual``): plain tables in, plotly figures out, tested directly.

    swap_flip_chart(core.perturb.visual.swap_flip_rates(swaps))        # flip rate per category over the steps
    occlusion_heatmap(image_array, occlusion_rows, "Edema")     # belief drop per patch over the X-ray
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import plotly.graph_objects as go


def swap_flip_chart(rates: pd.DataFrame, value: str = "flip_rate") -> go.Figure:
    """One line per category (true label) over the checkpoint steps: the share of image swaps that changed
    the answer (or ``follows_image``: that made it the swapped image's label)."""
    fig = go.Figure()
    palette = pcolors.qualitative.Safe
    for i, (category, part) in enumerate(rates.sort_values("step").groupby("category", sort=True)):
        fig.add_trace(go.Scatter(
            x=part["step"], y=part[value], mode="lines+markers", name=html.escape(str(category)),
            line={"color": palette[i % len(palette)]}, customdata=np.stack([part["checkpoint"], part["n"]], -1),
            hovertemplate=f"{html.escape(str(category))}<br>%{{customdata[0]}} (step %{{x}}): %{{y:.2f}} "
                          "of %{customdata[1]} swaps<extra></extra>"))
    fig.update_layout(height=340, margin={"t": 20, "l": 10, "r": 10}, legend={"title": "true label"},
                      xaxis={"title": "checkpoint step"},
                      yaxis={"title": value.replace("_", " ") + " under image swaps", "range": [-0.02, 1.02]})
    return fig


def _grid(rows: pd.DataFrame, value: str) -> tuple[list[int], list[int], np.ndarray]:
    """Cell edges in image pixels and the (rows, cols) values of one checkpoint's patches."""
    cols = rows.drop_duplicates("col").sort_values("col")
    lines = rows.drop_duplicates("row").sort_values("row")
    xs = [*cols["x0"].tolist(), int(cols["x1"].iloc[-1])]
    ys = [*lines["y0"].tolist(), int(lines["y1"].iloc[-1])]
    z = rows.pivot_table(index="row", columns="col", values=value).to_numpy(dtype=float)
    return xs, ys, z


MIN_SPAN = 1.0  # percentage points: the colour scale never stretches a smaller effect to full colour


def occlusion_heatmap(image: np.ndarray, rows: pd.DataFrame, label: str, value: str = "drop") -> go.Figure:
    """The image (``(H, W, 3)`` uint8) with, on top, a semi-transparent heatmap of ``value`` (the drop of the
    belief in ``label`` when a patch is greyed) per patch, in percentage points; one heatmap per checkpoint,
    picked by a slider. ``rows``: ``core.perturb.visual.occlusion_test`` rows of one trajectory. Red: covering
    the patch lowers the belief (the answer leans on it); blue: raises it. One colour scale for every
    checkpoint, so they compare, from the largest change (at least ``MIN_SPAN`` points, so that noise of 1e-4
    stays white instead of filling the scale)."""
    part = rows[rows["label"] == label]
    order = part.drop_duplicates("checkpoint").sort_values("step")["checkpoint"].tolist()
    span = max(100 * float(part[value].abs().max()), MIN_SPAN) if len(part) else MIN_SPAN
    fig = go.Figure(go.Image(z=image, x0=0.5, y0=0.5, hoverinfo="skip"))  # pixel i spans [i, i + 1]: the patches' edges
    for i, name in enumerate(order):
        xs, ys, z = _grid(part[part["checkpoint"] == name], value)
        fig.add_trace(go.Heatmap(
            x=xs, y=ys, z=100 * z, zmin=-span, zmid=0, zmax=span, colorscale="RdBu_r", opacity=0.55, visible=i == 0,
            name=html.escape(name), colorbar={"title": f"{value} of<br>P({html.escape(label)}),<br>points"},
            hovertemplate=f"{html.escape(name)}: {value} %{{z:.1f}} points<extra></extra>"))
    steps = [{"label": html.escape(n), "method": "update",
              "args": [{"visible": [True] + [j == i for j in range(len(order))]}]} for i, n in enumerate(order)]
    h, w = image.shape[:2]
    fig.update_layout(
        height=min(720, max(320, int(480 * h / max(w, 1)) + 120)), margin={"t": 30, "l": 10, "r": 10, "b": 10},
        sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": "checkpoint: "}, "pad": {"t": 30}}],
        xaxis={"showticklabels": False, "range": [0, w]},
        yaxis={"showticklabels": False, "range": [h, 0], "scaleanchor": "x"})
    return fig


def swap_belief_paths(rows: pd.DataFrame) -> go.Figure:
    """The belief in the true label along the CoT under each checkpoint, with the study's own image (solid)
    and with the swapped-in image (dashed). ``rows``: one trajectory and one swapped image, probed at
    sentence ends (``core.perturb.visual.VisualConfig.positions``)."""
    fig = go.Figure()
    palette = pcolors.qualitative.Safe
    order = rows.drop_duplicates("checkpoint").sort_values("step")["checkpoint"].tolist()
    for i, name in enumerate(order):
        part = rows[rows["checkpoint"] == name].sort_values("position")
        color = palette[i % len(palette)]
        for column, dash, what in (("belief_before", "solid", "own image"), ("belief_original", "dash", "swapped")):
            fig.add_trace(go.Scatter(
                x=part["position"], y=part[column], mode="lines+markers", line={"color": color, "dash": dash},
                name=f"{html.escape(name)} · {what}",
                hovertemplate=f"{html.escape(name)}, {what}: %{{y:.3f}} after %{{x}} tokens<extra></extra>"))
    gold = html.escape(str(rows["gold"].iloc[0])) if len(rows) else ""
    fig.update_layout(height=340, margin={"t": 20, "l": 10, "r": 10}, xaxis={"title": "tokens into the CoT"},
                      yaxis={"title": f"P({gold})", "range": [-0.02, 1.02]})
    return fig
