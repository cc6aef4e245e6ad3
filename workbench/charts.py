"""Pure chart builders: plain data in, ``plotly`` figure out. Tested directly (page tests cannot see inside charts)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

DRIFT_SERIES = {
    "accuracy": ("held-out accuracy", "#2a9d8f", "solid"),
    "perturbed_accuracy": ("perturbed accuracy", "#264653", "dot"),
    "flip_rate": ("flip rate (near-synonym swap)", "#e76f51", "solid"),
    "opacity_to_lung_opacity": ('shortcut: "opacity" → Lung Opacity', "#d62828", "dash"),
    "rare_class_accuracy": ("rare-class accuracy (beneficial)", "#457b9d", "dash"),
}


def drift_table(rows: list[dict]) -> pd.DataFrame:
    """One row per checkpoint, the columns of ``DRIFT_SERIES`` in order."""
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["checkpoint", "step", *DRIFT_SERIES])
    return df[["checkpoint", "step", *[c for c in DRIFT_SERIES if c in df]]].sort_values("step")


def drift_over_steps(df: pd.DataFrame) -> go.Figure:
    """Lines over the RFT step axis, one per figure in ``DRIFT_SERIES`` present in ``df``."""
    fig = go.Figure()
    for col, (label, color, dash) in DRIFT_SERIES.items():
        if col in df:
            fig.add_trace(go.Scatter(x=df["step"], y=df[col], name=label, mode="lines+markers",
                                     line={"color": color, "dash": dash}, customdata=df["checkpoint"],
                                     hovertemplate="%{customdata}<br>" + label + ": %{y:.3f}<extra></extra>"))
    fig.update_layout(xaxis_title="RFT step", yaxis_title="share of held-out studies", yaxis_range=[0, 1.02],
                      legend={"orientation": "h", "y": -0.25}, margin={"t": 30, "l": 10, "r": 10},
                      height=380)
    return fig
