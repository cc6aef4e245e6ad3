"""Pure chart builders: plain data in, ``plotly`` figure out. Tested directly (page tests cannot see inside charts)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Two accuracies appear in the workbench and must never be confused: GREEDY_ACCURACY decodes the whole CoT
# and reads its answer (the world's held-out table, CPO evaluations); PROBE_ACCURACY is the answer probe's
# top label, teacher-forced at the end of the given CoT (an analysis's summary).
GREEDY_ACCURACY = "accuracy, greedy decoding of the whole CoT"
PROBE_ACCURACY = "probe accuracy, teacher-forced answer after the given CoT"
DRIFT_SERIES = {  # every world's held-out figures (core.evaluation); a world's plug-in adds its own (extra=)
    "accuracy": (GREEDY_ACCURACY, "#2a9d8f", "solid"),
    "perturbed_accuracy": ("perturbed accuracy (greedy decoding)", "#264653", "dot"),
    "flip_rate": ("flip rate (near-synonym swap)", "#e76f51", "solid"),
}


def series_of(extra: dict | None = None) -> dict:
    """``DRIFT_SERIES`` followed by a world's own figures (``World.chart_metrics()``)."""
    return {**DRIFT_SERIES, **(extra or {})}


def drift_table(rows: list[dict], extra: dict | None = None) -> pd.DataFrame:
    """One row per checkpoint, the columns of ``series_of(extra)`` in order."""
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["checkpoint", "step", *series_of(extra)])
    return df[["checkpoint", "step", *[c for c in series_of(extra) if c in df]]].sort_values("step")


def drift_over_steps(df: pd.DataFrame, extra: dict | None = None) -> go.Figure:
    """Lines over the RFT step axis, one per figure in ``series_of(extra)`` present in ``df``."""
    fig = go.Figure()
    for col, (label, color, dash) in series_of(extra).items():
        if col in df:
            fig.add_trace(go.Scatter(x=df["step"], y=df[col], name=label, mode="lines+markers",
                                     line={"color": color, "dash": dash}, customdata=df["checkpoint"],
                                     hovertemplate="%{customdata}<br>" + label + ": %{y:.3f}<extra></extra>"))
    fig.update_layout(xaxis_title="RFT step", yaxis_title="share of held-out studies", yaxis_range=[0, 1.02],
                      legend={"orientation": "h", "y": -0.25}, margin={"t": 30, "l": 10, "r": 10},
                      height=380)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Drift explorer. Every text that reaches a hover label or an axis is escaped: plotly renders a subset of
# HTML there, and token strings such as "<think>" or a label from an imported file must show as text.

STEP_COLORS = "Viridis"


def _esc(text) -> str:
    return html.escape(str(text), quote=False).replace("\n", "<br>")


def _step_colors(n: int) -> list[str]:
    return pcolors.sample_colorscale(STEP_COLORS, [i / max(1, n - 1) * 0.9 for i in range(n)])


def summary_over_steps(summary: pd.DataFrame, changes: pd.DataFrame | None = None,
                       branches: dict | None = None) -> go.Figure:
    """Per checkpoint: accuracy, final gold belief, detrimental / beneficial shares (top); KL (bottom).
    Step pairs where the per-trajectory test found a detrimental change are shaded. ``branches`` (series
    name -> ``core.branches.Branch``) are CPO runs: drawn as stars above their start checkpoint, joined to it
    by a dotted line, never as points of the RFT step axis."""
    branches = {k: b for k, b in (branches or {}).items() if k in set(summary["checkpoint"])}
    is_branch = summary["checkpoint"].isin(list(branches))
    rft, runs = summary[~is_branch], summary[is_branch]
    if changes is not None and not changes.empty and len(runs):  # steps that exist only because of a branch
        only = set(runs["step"]) - set(rft["step"])
        changes = changes[~changes["from_step"].isin(only) & ~changes["to_step"].isin(only)]
    fig = _summary_lines(rft, changes)
    for _, r in runs.iterrows():
        _branch_markers(fig, rft, r, branches[r["checkpoint"]])
    return fig


BRANCH_SERIES = (("accuracy", 1), ("final_gold_prob", 1), ("share_detrimental", 1), ("kl_base", 2))


def _branch_markers(fig: go.Figure, rft: pd.DataFrame, run: pd.Series, branch) -> None:
    """One CPO run: a star per series at its start checkpoint's step, a dotted line from the start's value."""
    start = rft[rft["checkpoint"] == branch.start]
    if start.empty:
        return
    x = float(start["step"].iloc[0])
    label = f"CPO run {_esc(run['checkpoint'])} (from {_esc(branch.start)}, {branch.run_steps} steps)"
    for i, (col, row) in enumerate(BRANCH_SERIES):
        if col not in run or col not in start:
            continue
        y0, y1 = float(start[col].iloc[0]), float(run[col])
        fig.add_trace(go.Scatter(x=[x, x], y=[y0, y1], mode="lines+markers", name=label, legendgroup=label,
                                 showlegend=i == 0, line={"color": "#6a4c93", "dash": "dot"},
                                 marker={"symbol": ["circle-open", "star"], "size": [6, 13], "color": "#6a4c93"},
                                 hovertemplate=f"{col}: %{{y:.3f}}<extra>{label}</extra>"), row=row, col=1)


def _summary_lines(summary: pd.DataFrame, changes: pd.DataFrame | None) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4])
    top = [("accuracy", PROBE_ACCURACY, "#2a9d8f", "solid"),
           ("final_gold_prob", "final gold-answer belief", "#264653", "dot"),
           ("share_detrimental", "share of detrimental positions", "#d62828", "solid"),
           ("share_beneficial", "share of beneficial positions", "#457b9d", "dash")]
    bottom = [("kl_base", "KL to base", "#e76f51", "solid"), ("kl_prev", "KL to previous step", "#f4a261", "dash")]
    names = [_esc(c) for c in summary["checkpoint"]]
    for row, series in ((1, top), (2, bottom)):
        for col, label, color, dash in series:
            if col in summary:
                fig.add_trace(go.Scatter(x=summary["step"], y=summary[col], name=label, mode="lines+markers",
                                         line={"color": color, "dash": dash}, customdata=names,
                                         hovertemplate="%{customdata}<br>" + label + ": %{y:.3f}<extra></extra>"),
                              row=row, col=1)
    if changes is not None and not changes.empty:
        bad = changes[changes["changed"] & (changes["direction"] == "detrimental")]
        for _, r in bad.iterrows():
            fig.add_vrect(x0=r["from_step"], x1=r["to_step"], fillcolor="#d62828", opacity=0.10, line_width=0,
                          annotation_text="detrimental" + (" · Page-Hinkley alarm" if r["page_hinkley_alarm"] else ""),
                          annotation_position="top left", annotation_font_size=11)
    fig.update_yaxes(title_text="share", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="nats", row=2, col=1)
    fig.update_xaxes(title_text="RFT step", row=2, col=1)
    fig.update_layout(height=460, legend={"orientation": "h", "y": -0.18}, margin={"t": 30, "l": 10, "r": 10})
    return fig


def category_heatmap(table: pd.DataFrame) -> go.Figure:
    """Accuracy per gold label (rows) and checkpoint (columns), from ``drift.category_accuracy``."""
    fig = go.Figure(go.Heatmap(z=table.to_numpy(dtype=float), x=[_esc(c) for c in table.columns],
                               y=[_esc(i) for i in table.index], colorscale="RdYlGn", zmin=0, zmax=1,
                               colorbar={"title": "accuracy"}, texttemplate="%{z:.2f}",
                               hovertemplate="%{y} at %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(height=max(260, 26 * len(table) + 90), margin={"t": 20, "l": 10, "r": 10},
                      yaxis={"autorange": "reversed"})
    return fig


def token_heatmap(m, title: str = "") -> go.Figure:
    """Checkpoints x tokens coloured by ``m.metric`` (a ``core.explore.TokenMatrix``); detrimental positions
    marked ▼ (red), beneficial ▲ (blue). Tokens are the x-axis tick labels."""
    from core.explore import METRICS

    label, _, diverging = METRICS[m.metric]
    x = list(range(len(m.positions)))
    rows = [_esc(c) for c in m.checkpoints]
    z = m.values
    if diverging:
        lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
        scale = {"colorscale": "RdBu", "zmid": 0, "zmin": -lim, "zmax": lim}
    else:
        scale = {"colorscale": "Viridis" if m.metric in ("prob", "entropy") else "Inferno"}
    fig = go.Figure(go.Heatmap(z=z, x=x, y=rows, customdata=[[_esc(h) for h in row] for row in m.hover],
                               hovertemplate="%{y} · position %{x}<br>%{customdata}<br>" + _esc(label)
                               + ": %{z:.4f}<extra></extra>", colorbar={"title": {"text": m.metric}},
                               xgap=1, ygap=1, **scale))
    for kind, symbol, color in (("detrimental", "triangle-down", "#d62828"), ("beneficial", "triangle-up", "#1d3557")):
        ii, jj = np.nonzero(m.direction == kind)
        if len(ii):
            fig.add_trace(go.Scatter(x=jj, y=[rows[i] for i in ii], mode="markers", name=kind,
                                     marker={"symbol": symbol, "size": 8, "color": color,
                                             "line": {"width": 1, "color": "white"}},
                                     hovertemplate=f"{kind} position<extra></extra>"))
    fig.update_layout(
        title={"text": _esc(title), "font": {"size": 14}} if title else None,
        xaxis={"tickmode": "array", "tickvals": x, "ticktext": [_esc(t) for t in m.tokens], "tickangle": -60,
               "title": "token of the chain of thought"},
        yaxis={"autorange": "reversed", "title": "checkpoint"},
        height=170 + 34 * len(rows), margin={"t": 40 if title else 10, "l": 10, "r": 10, "b": 10},
        legend={"orientation": "h", "y": 1.08, "x": 1, "xanchor": "right"})
    return fig


def belief_lines(path: pd.DataFrame, tokens: list[str] | None = None) -> go.Figure:
    """The probed belief in the gold answer along the trajectory (report, then CoT), one line per checkpoint
    coloured by step. Position 0 is the first token of the model's completion."""
    order = list(dict.fromkeys(path["checkpoint"]))
    colors = _step_colors(len(order))
    fig = go.Figure()
    for name, color in zip(order, colors, strict=True):
        d = path[path["checkpoint"] == name]
        fig.add_trace(go.Scatter(x=d["position"], y=d["gold_prob"], name=_esc(name), mode="lines",
                                 line={"color": color, "width": 2.5 if name == order[0] else 1.8},
                                 customdata=[_esc(a) for a in d["answer"]],
                                 hovertemplate=_esc(name) + " · position %{x}<br>gold belief %{y:.3f}"
                                 "<br>answer now: %{customdata}<extra></extra>"))
    fig.add_vline(x=0, line_dash="dot", line_color="#888", annotation_text="CoT starts", annotation_font_size=11)
    gold = path["gold"].dropna().iloc[0] if path["gold"].notna().any() else "?"
    fig.update_layout(height=340, yaxis={"range": [-0.02, 1.02], "title": f"P({_esc(gold)})"},
                      xaxis={"title": "position (negative: inside the report)"},
                      legend={"orientation": "h", "y": -0.25}, margin={"t": 20, "l": 10, "r": 10})
    return fig


def answer_distribution(path: pd.DataFrame, checkpoint: str, labels: list[str]) -> go.Figure:
    """Under one checkpoint, the probed probability of each of ``labels`` along the trajectory."""
    d = path[path["checkpoint"] == checkpoint]
    palette = pcolors.qualitative.Safe
    fig = go.Figure()
    for i, y in enumerate(labels):
        fig.add_trace(go.Scatter(x=d["position"], y=d[f"p:{y}"], name=_esc(y), mode="lines", stackgroup="one",
                                 line={"width": 0.5, "color": palette[i % len(palette)]},
                                 hovertemplate=_esc(y) + ": %{y:.3f}<extra></extra>"))
    fig.add_vline(x=0, line_dash="dot", line_color="#888")
    fig.update_layout(height=300, yaxis={"range": [0, 1.0], "title": "probed answer distribution"},
                      xaxis={"title": f"position under {_esc(checkpoint)}"}, hovermode="x unified",
                      legend={"orientation": "h", "y": -0.3}, margin={"t": 20, "l": 10, "r": 10})
    return fig


def perturbation_beliefs(df: pd.DataFrame) -> go.Figure:
    """One trajectory, every checkpoint: gold-answer belief before and after the swap (probe mode), answers
    in the hover, flips marked."""
    names = [_esc(c) for c in df["checkpoint"]]
    fig = go.Figure()
    for col, label, color in (("gold_before", "before the swap", "#2a9d8f"), ("gold_after", "after the swap", "#e76f51")):
        answers = df["answer_before" if col == "gold_before" else "answer_after"]
        fig.add_trace(go.Bar(x=names, y=df[col], name=label, marker_color=color,
                             customdata=[_esc(a) for a in answers],
                             hovertemplate="%{x}<br>" + label + ": gold belief %{y:.3f}, answer %{customdata}"
                             "<extra></extra>"))
    flips = df[df["flip"]]
    if len(flips):
        fig.add_trace(go.Scatter(x=[_esc(c) for c in flips["checkpoint"]], y=[1.05] * len(flips), mode="text",
                                 text=["flip"] * len(flips), textfont={"color": "#d62828"}, name="answer flipped",
                                 hoverinfo="skip"))
    fig.update_layout(barmode="group", height=320, yaxis={"range": [0, 1.12], "title": "P(gold answer)"},
                      legend={"orientation": "h", "y": -0.25}, margin={"t": 20, "l": 10, "r": 10})
    return fig


def perturbation_over_steps(summary: pd.DataFrame) -> go.Figure:
    """Over a dataset: accuracy before and after the swap and the flip rate, per checkpoint."""
    fig = go.Figure()
    for col, label, color, dash in (("accuracy_before", "accuracy before the swap", "#2a9d8f", "solid"),
                                    ("accuracy_after", "accuracy after the swap", "#264653", "dot"),
                                    ("flip_rate", "flip rate", "#e76f51", "solid")):
        fig.add_trace(go.Scatter(x=summary["step"], y=summary[col], name=label, mode="lines+markers",
                                 line={"color": color, "dash": dash}, customdata=[_esc(c) for c in summary["checkpoint"]],
                                 hovertemplate="%{customdata}<br>" + label + ": %{y:.3f}<extra></extra>"))
    fig.update_layout(height=340, xaxis_title="RFT step", yaxis={"range": [0, 1.02], "title": "share"},
                      legend={"orientation": "h", "y": -0.25}, margin={"t": 20, "l": 10, "r": 10})
    return fig


def category_flip_heatmap(df: pd.DataFrame, value: str = "flip_rate") -> go.Figure:
    """``perturb.category_flips`` as labels x checkpoints, coloured by ``value``."""
    order = df.drop_duplicates("checkpoint").sort_values("step")["checkpoint"].tolist()
    table = df.pivot_table(index="gold", columns="checkpoint", values=value).reindex(columns=order)
    reverse = value == "flip_rate"
    fig = go.Figure(go.Heatmap(z=table.to_numpy(dtype=float), x=[_esc(c) for c in table.columns],
                               y=[_esc(i) for i in table.index], zmin=0, zmax=1, texttemplate="%{z:.2f}",
                               colorscale="RdYlGn_r" if reverse else "RdYlGn", colorbar={"title": value},
                               hovertemplate="%{y} at %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(height=max(240, 26 * len(table) + 90), margin={"t": 20, "l": 10, "r": 10},
                      yaxis={"autorange": "reversed"})
    return fig


# ---------------------------------------------------------------------------------------------------------
# CPO runs

RUN_PANELS = [("loss", ["loss"]), ("rewards", ["rewards/chosen", "rewards/rejected"]),
              ("margin", ["rewards/margins"]), ("reward accuracy", ["rewards/accuracies"])]


def run_curves(df: pd.DataFrame) -> go.Figure:
    """A run's logged metrics over its steps: loss, rewards of chosen and rejected, their margin, and the
    reward accuracy (overall, and per data source where the trainer logged ``accuracy/<source>``)."""
    fig = make_subplots(rows=1, cols=4, subplot_titles=[t for t, _ in RUN_PANELS], horizontal_spacing=0.06)
    palette = pcolors.qualitative.Safe
    for col, (_, keys) in enumerate(RUN_PANELS, start=1):
        extra = [c for c in df.columns if c.startswith("accuracy/")] if col == 4 else \
            [c for c in df.columns if c.startswith("loss/")] if col == 1 else []
        for i, key in enumerate([k for k in keys if k in df] + extra):
            fig.add_trace(go.Scatter(x=df["step"], y=df[key], name=_esc(key), mode="lines",
                                     line={"color": palette[(i + 2 * col) % len(palette)],
                                           "dash": "dot" if "/" in key and key.split("/")[0] in ("accuracy", "loss") else "solid"},
                                     hovertemplate=_esc(key) + " at step %{x}: %{y:.4f}<extra></extra>"), row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(range=[-0.02, 1.02], row=1, col=4)
    fig.update_layout(height=300, legend={"orientation": "h", "y": -0.3}, margin={"t": 40, "l": 10, "r": 10})
    return fig


def run_comparison(df: pd.DataFrame, extra: dict | None = None) -> go.Figure:
    """Runs side by side on the held-out set: accuracy, perturbed accuracy, flip rate, malformed answers and
    the world's own figures (``extra``, e.g. the sample world's shortcut share)."""
    bars = [(col, label, color) for col, (label, color, _) in
            {**DRIFT_SERIES, "malformed": ("malformed answers", "#8d99ae", "solid"), **(extra or {})}.items()]
    names = [_esc(r) for r in df["run"]]
    fig = go.Figure()
    for col, label, color in bars:
        if col in df:
            fig.add_trace(go.Bar(x=names, y=df[col], name=label, marker_color=color,
                                 hovertemplate="%{x}<br>" + label + ": %{y:.3f}<extra></extra>"))
    fig.update_layout(barmode="group", height=340, yaxis={"range": [0, 1.02], "title": "share of held-out studies"},
                      legend={"orientation": "h", "y": -0.25}, margin={"t": 20, "l": 10, "r": 10})
    return fig
