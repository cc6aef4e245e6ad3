"""Pure chart builders: plain data in, ``plotly`` figure out. Tested directly (page tests cannot see inside charts)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures import LEGEND_BELOW

# Two accuracies appear in the workbench and must never be confused: GREEDY_ACCURACY decodes the whole CoT
# and reads its answer (the world's held-out table, CPO evaluations); PROBE_ACCURACY is the answer probe's
# top label, teacher-forced at the end of the given CoT (an analysis's summary).
GREEDY_ACCURACY = "accuracy, greedy decoding of the whole CoT"
PROBE_ACCURACY = "probe accuracy, teacher-forced answer after the given CoT"
DRIFT_SERIES = {  # every world's held-out figures (core.perturb.evaluation); a world's plug-in adds its own (extra=)
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
                                     line={"color": color, "dash": dash}, customdata=[_esc(c) for c in df["checkpoint"]],
                                     hovertemplate="%{customdata}<br>" + label + ": %{y:.3f}<extra></extra>"))
    fig.update_layout(xaxis_title="RFT step", yaxis_title="share of held-out studies", yaxis_range=[0, 1.02],
                      legend=LEGEND_BELOW, margin={"t": 30, "l": 10, "r": 10, "b": 10},
                      height=440)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Drift explorer. Every text that reaches a hover label or an axis is escaped: plotly renders a subset of
# HTML there, and token strings such as "<think>" or a label from an imported file must show as text.

STEP_COLORS = "Viridis"
EVERY_CATEGORY = {"tickmode": "linear", "dtick": 1}  # a label on every column (plotly tilts them to fit)


def _esc(text) -> str:
    return html.escape(str(text), quote=False).replace("\n", "<br>")


def _step_colors(n: int) -> list[str]:
    return pcolors.sample_colorscale(STEP_COLORS, [i / max(1, n - 1) * 0.9 for i in range(n)])


def summary_over_steps(summary: pd.DataFrame, changes: pd.DataFrame | None = None,
                       branches: dict | None = None) -> go.Figure:
    """Per checkpoint: accuracy, final gold belief, detrimental / beneficial shares (top); KL (bottom).
    Step pairs where the per-trajectory test found a detrimental change are shaded. ``branches`` (series
    name -> ``core.models.branches.Branch``) are CPO runs: drawn as stars above their start checkpoint, joined to it
    by a dotted line, never as points of the RFT step axis."""
    branches = {k: b for k, b in (branches or {}).items() if k in set(summary["checkpoint"])}
    is_branch = summary["checkpoint"].isin(list(branches))
    rft, runs = summary[~is_branch], summary[is_branch]
    if changes is not None and "branch" in changes:  # a run against its start: not a stretch of the step axis
        changes = changes[~changes["branch"].astype(bool)]
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
        fig.add_trace(_branch_trace(x, float(start[col].iloc[0]), float(run[col]), label, col, i == 0),
                      row=row, col=1)


BRANCH_COLOR = "#6a4c93"  # CPO runs, wherever they are drawn


def _branch_trace(x: float, y0: float, y1: float, label: str, what: str, legend: bool, color: str = BRANCH_COLOR):
    """A run drawn beside the step axis: from its start's value (open circle) to its own (star) at the start's
    step, dotted, so no RFT curve passes through it."""
    return go.Scatter(x=[x, x], y=[y0, y1], mode="lines+markers", name=label, legendgroup=label, showlegend=legend,
                      line={"color": color, "dash": "dot"},
                      marker={"symbol": ["circle-open", "star"], "size": [6, 13], "color": color},
                      hovertemplate=f"{_esc(what)}: %{{y:.3f}}<extra>{label}</extra>")


def branch_order(names: list[str], branches: dict | None) -> list[str]:
    """``names`` (in step order) with each CPO run moved right after its start checkpoint (runs whose start is
    absent go last): a run sits beside where it started, not at the step it joined the series with."""
    branches = branches or {}
    rft = [n for n in names if n not in branches]
    out = list(rft)
    for n in [n for n in names if n in branches]:
        start = branches[n].start
        at = max((i for i, m in enumerate(out) if m == start or branches.get(m) and branches[m].start == start),
                 default=len(out) - 1)
        out.insert(at + 1, n)
    return out


def branch_label(name: str, branches: dict | None) -> str:
    """A checkpoint's label on a categorical axis: a CPO run says what it branched from."""
    b = (branches or {}).get(name)
    return _esc(name) if b is None else f"↳ {_esc(name)} (CPO from {_esc(b.start)})"


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
        for _, r in bad.iterrows():  # shaded on both rows, named in the legend (labels on each crowded the lines)
            fig.add_vrect(x0=r["from_step"], x1=r["to_step"], fillcolor="#d62828", opacity=0.10, line_width=0)
        if len(bad):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="detrimental step change (shaded)",
                                     marker={"symbol": "square", "size": 14, "color": "rgba(214, 40, 40, 0.25)"},
                                     hoverinfo="skip"), row=1, col=1)
        for _, r in bad[bad["page_hinkley_alarm"].astype(bool)].iterrows():  # above the plot, at the alarm's step
            fig.add_annotation(x=r["to_step"], xref="x", xanchor="right", y=1, yref="paper", yanchor="bottom",
                               showarrow=False, font={"size": 11, "color": "#9d0208"}, text="Page-Hinkley alarm ▼")
    fig.update_yaxes(title_text="share", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="nats", row=2, col=1)
    fig.update_xaxes(title_text="RFT step", row=2, col=1)
    fig.update_layout(height=540, legend=LEGEND_BELOW, margin={"t": 30, "l": 10, "r": 10, "b": 10})
    return fig


def category_heatmap(table: pd.DataFrame, branches: dict | None = None) -> go.Figure:
    """Accuracy per gold label (rows) and checkpoint (columns), from ``drift.category_accuracy``; a CPO run's
    column (``branches``) stands right after its start's, labelled as a run."""
    table = table[branch_order(list(table.columns), branches)]
    fig = go.Figure(go.Heatmap(z=table.to_numpy(dtype=float), x=[branch_label(c, branches) for c in table.columns],
                               y=[_esc(i) for i in table.index], colorscale="RdYlGn", zmin=0, zmax=1,
                               colorbar={"title": "accuracy"}, texttemplate="%{z:.2f}",
                               hovertemplate="%{y} at %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(height=max(300, 26 * len(table) + 150), margin={"t": 20, "l": 10, "r": 10, "b": 10},
                      yaxis={"autorange": "reversed", "dtick": 1}, xaxis=EVERY_CATEGORY)
    return fig


TOKEN_LABELS = 80  # rotated token labels that fit side by side in the page's chart width (about 700-1000 px)


SHORT_METRIC = {"prob": "probability", "entropy": "entropy (nats)", "kl_base": "KL to base (nats)",
                "kl_prev": "KL to previous (nats)", "effect": "belief effect", "effect_drift": "effect drift"}
NOT_MEASURED = "#d9d9d9"
MARKS = {"detrimental": ("triangle-down", "#d62828", "▼"), "beneficial": ("triangle-up", "#1d3557", "▲")}


def token_heatmap(m, title: str = "", minimap=None, focus: int | None = None, branches: dict | None = None) -> go.Figure:
    """Checkpoints x tokens coloured by ``m.metric`` (a ``core.drift.explore.TokenMatrix``, whole or a window of one);
    detrimental positions marked ▼ (red), beneficial ▲ (blue); tokens are the x-axis tick labels (every one
    up to ``TOKEN_LABELS`` columns, every k-th beyond, so that they never overlap). With
    ``minimap`` (``core.drift.explore.Minimap`` of the whole trajectory) a thin strip of the whole length sits above,
    the window marked on it, and both share one colour scale; ``focus`` (a position) is outlined. CPO runs
    (``branches``) stand right below their start checkpoint, labelled as runs, never between RFT steps. A ▼ / ▲
    cell's hover says what every cell's does (token, top-k, value) and then its direction."""
    from core.drift.explore import METRICS

    label, _, diverging = METRICS[m.metric]
    x = list(range(m.first, m.first + len(m.positions)))  # columns of the whole trajectory
    order = [m.checkpoints.index(c) for c in branch_order(list(m.checkpoints), branches)]
    values, direction = m.values[order], m.direction[order]
    rows = [branch_label(m.checkpoints[i], branches) for i in order]
    scale = _heat_scale(m, diverging, minimap)
    fig = go.Figure()
    hover = [m.hover[i] for i in order] if m.hover else [[repr(t) for t in m.tokens]] * len(rows)
    cells = [[f"position {p}<br>{_esc(h)}" for p, h in zip(m.positions, row, strict=True)] for row in hover]
    fig.add_trace(go.Heatmap(z=values, x=x, y=rows, customdata=cells,
                             hovertemplate="%{y} · %{customdata}<br>" + _esc(label) + ": %{z:.4f}<extra></extra>",
                             colorbar={"title": {"text": SHORT_METRIC.get(m.metric, m.metric)}}, xgap=1, ygap=1, **scale))
    for kind, (symbol, color, sign) in MARKS.items():
        ii, jj = np.nonzero(direction == kind)
        if len(ii):
            text = [f"{rows[i]} · {cells[i][j]}<br>{_esc(label)}: {values[i, j]:.4f}<br>{sign} {kind} position"
                    for i, j in zip(ii, jj, strict=True)]
            fig.add_trace(go.Scatter(x=jj + m.first, y=[rows[i] for i in ii], mode="markers", name=f"{kind} position",
                                     marker={"symbol": symbol, "size": 8, "color": color,
                                             "line": {"width": 1, "color": "white"}},
                                     customdata=text, hovertemplate="%{customdata}<extra></extra>"))
    if focus in m.positions:
        c = m.first + m.positions.index(focus)
        fig.add_vrect(x0=c - 0.5, x1=c + 0.5, line={"color": "#111", "width": 2})
    every = -(-len(x) // TOKEN_LABELS)  # wider windows label every k-th token (the hover names each)
    axis = {"tickmode": "array", "tickvals": x[::every], "ticktext": [_esc(t) for t in m.tokens[::every]], "tickangle": -90,
            "tickfont": {"size": 11}, "title": "token of the chain of thought", "range": [x[0] - 0.5, x[-1] + 0.5]}
    height = 200 + 34 * len(rows) + (70 if minimap else 0)
    # grey behind the cells: a position not measured (NaN) never reads as a value of zero (white)
    fig.update_layout(xaxis={**axis, "showgrid": False}, yaxis={"autorange": "reversed", "title": "checkpoint",
                                                               "showgrid": False}, plot_bgcolor=NOT_MEASURED)
    if minimap:
        _minimap_strip(fig, m, minimap, scale, 60 / height)
    fig.update_layout(
        title={"text": _esc(title), "font": {"size": 14}} if title else None, height=height,
        margin={"t": 40 if title else 10, "l": 10, "r": 10, "b": 10}, legend=LEGEND_BELOW)
    return fig


def _heat_scale(m, diverging: bool, minimap=None) -> dict:
    """The colour scale: from the whole trajectory when a window is shown (colours compare across windows)."""
    values = np.array([minimap.lo, minimap.hi]) if minimap else m.values
    if diverging:
        lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        return {"colorscale": "RdBu", "zmid": 0, "zmin": -lim, "zmax": lim}
    scale = {"colorscale": "Viridis" if m.metric in ("prob", "entropy") else "Inferno"}
    return {**scale, "zmin": minimap.lo, "zmax": minimap.hi} if minimap else scale


def _minimap_strip(fig: go.Figure, m, mini, scale: dict, share: float) -> None:
    """Above the window, on axes x2 / y2 (the top ``share`` of the plot): the whole trajectory downsampled, one
    cell per bin of columns, the window framed. Laid out by hand: ``make_subplots`` takes a tenth of a second."""
    centres = (mini.starts + mini.ends - 1) / 2
    spans = [f"positions {a} to {b}" for a, b in zip(mini.positions, mini.last_positions, strict=True)]
    fig.add_trace(go.Heatmap(z=[mini.values], x=centres, y=["whole CoT"], customdata=[spans], showscale=False,
                             hovertemplate="%{customdata}<br>peak: %{z:.4f}<extra>whole CoT</extra>",
                             xaxis="x2", yaxis="y2", **scale))
    fig.add_shape(type="rect", x0=m.first - 0.5, x1=m.first + len(m.positions) - 0.5, y0=0, y1=1, xref="x2",
                  yref="y2 domain", line={"color": "#111", "width": 2})
    fig.update_layout(yaxis={"domain": [0, 1 - share * 1.4]},
                      xaxis2={"range": [-0.5, m.width - 0.5], "showticklabels": False, "anchor": "y2"},
                      yaxis2={"domain": [1 - share, 1], "tickfont": {"size": 10}, "anchor": "x2"})


def belief_lines(path: pd.DataFrame, tokens: list[str] | None = None, branches: dict | None = None) -> go.Figure:
    """The probed belief in the gold answer along the trajectory (report, then CoT), one line per checkpoint
    coloured by step. Position 0 is the first token of the model's completion. A CPO run (``branches``) is
    listed right after its start, dashed in the runs' colour and labelled as a run, never as a later step."""
    order = branch_order(list(dict.fromkeys(path["checkpoint"])), branches)
    rft = [n for n in order if n not in (branches or {})]
    colors = dict(zip(rft, _step_colors(len(rft)), strict=True))
    fig = go.Figure()
    for name in order:
        d = path[path["checkpoint"] == name]
        run = name not in colors
        fig.add_trace(go.Scatter(x=d["position"], y=d["gold_prob"], name=branch_label(name, branches), mode="lines",
                                 line={"color": BRANCH_COLOR if run else colors[name], "dash": "dash" if run else None,
                                       "width": 2.5 if name == order[0] or run else 1.8},
                                 customdata=[_esc(a) for a in d["answer"]],
                                 hovertemplate=_esc(name) + " · position %{x}<br>gold belief %{y:.3f}"
                                 "<br>answer now: %{customdata}<extra></extra>"))
    _cot_start(fig)
    gold = path["gold"].dropna().iloc[0] if path["gold"].notna().any() else "?"
    fig.update_layout(height=400, yaxis={"range": [-0.02, 1.02], "title": f"P({_esc(gold)})"},
                      xaxis={"title": "position (negative: inside the report)"},
                      legend=LEGEND_BELOW, margin={"t": 30, "l": 10, "r": 10, "b": 10})
    return fig


def _cot_start(fig: go.Figure) -> None:
    """A dotted line where the CoT starts, named above the plot (not on the belief lines)."""
    fig.add_vline(x=0, line_dash="dot", line_color="#888")
    fig.add_annotation(x=0, xref="x", y=1, yref="paper", yanchor="bottom", showarrow=False, text="CoT starts",
                       font={"size": 11, "color": "#555"})


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
    fig.update_layout(height=400, yaxis={"range": [0, 1.0], "title": "probed answer distribution"},
                      xaxis={"title": f"position under {_esc(checkpoint)}"}, hovermode="x unified",
                      legend=LEGEND_BELOW, margin={"t": 20, "l": 10, "r": 10, "b": 10})
    return fig


def perturbation_beliefs(df: pd.DataFrame, branches: dict | None = None) -> go.Figure:
    """One trajectory, every checkpoint: gold-answer belief before and after the swap (probe mode), answers
    in the hover, flips marked. CPO runs (``branches``) stand right after their start, labelled as runs."""
    order = branch_order(list(dict.fromkeys(df.sort_values("step", kind="stable")["checkpoint"])), branches)
    df = df.set_index("checkpoint").loc[order].reset_index()
    names = [branch_label(c, branches) for c in df["checkpoint"]]
    fig = go.Figure()
    for col, label, color in (("gold_before", "before the swap", "#2a9d8f"), ("gold_after", "after the swap", "#e76f51")):
        answers = df["answer_before" if col == "gold_before" else "answer_after"]
        fig.add_trace(go.Bar(x=names, y=df[col], name=label, marker_color=color,
                             customdata=[_esc(a) for a in answers],
                             hovertemplate="%{x}<br>" + label + ": gold belief %{y:.3f}, answer %{customdata}"
                             "<extra></extra>"))
    flips = df["flip"].to_numpy(dtype=bool)
    if flips.any():
        fig.add_trace(go.Scatter(x=[n for n, f in zip(names, flips, strict=True) if f], y=[1.05] * int(flips.sum()), mode="text",
                                 text=["flip"] * int(flips.sum()), textfont={"color": "#d62828"}, name="answer flipped",
                                 hoverinfo="skip"))
    fig.update_layout(barmode="group", height=380, yaxis={"range": [0, 1.12], "title": "P(gold answer)"},
                      xaxis={"categoryorder": "array", "categoryarray": names, **EVERY_CATEGORY},
                      legend=LEGEND_BELOW, margin={"t": 20, "l": 10, "r": 10, "b": 10})
    return fig


PERTURBATION_SERIES = (("accuracy_before", "accuracy before the swap", "#2a9d8f", "solid"),
                       ("accuracy_after", "accuracy after the swap", "#264653", "dot"),
                       ("flip_rate", "flip rate", "#e76f51", "solid"))


def perturbation_over_steps(summary: pd.DataFrame, branches: dict | None = None) -> go.Figure:
    """Over a dataset: accuracy before and after the swap and the flip rate, per RFT checkpoint along the step
    axis; each CPO run (``branches``) as a star above its start checkpoint, never a point of the curves."""
    branches = {k: b for k, b in (branches or {}).items() if k in set(summary["checkpoint"])}
    is_run = summary["checkpoint"].isin(list(branches))
    rft, runs = summary[~is_run], summary[is_run]
    fig = go.Figure()
    for col, label, color, dash in PERTURBATION_SERIES:
        fig.add_trace(go.Scatter(x=rft["step"], y=rft[col], name=label, mode="lines+markers",
                                 line={"color": color, "dash": dash}, customdata=[_esc(c) for c in rft["checkpoint"]],
                                 hovertemplate="%{customdata}<br>" + label + ": %{y:.3f}<extra></extra>"))
    for _, r in runs.iterrows():
        b = branches[r["checkpoint"]]
        start = rft[rft["checkpoint"] == b.start]
        if start.empty:
            continue
        label = f"CPO run {_esc(r['checkpoint'])} (from {_esc(b.start)}, {b.run_steps} steps)"
        for i, (col, what, color, _) in enumerate(PERTURBATION_SERIES):
            fig.add_trace(_branch_trace(float(start["step"].iloc[0]), float(start[col].iloc[0]), float(r[col]),
                                        label, what, i == 0, color))
    fig.update_layout(height=400, xaxis_title="RFT step", yaxis={"range": [0, 1.02], "title": "share"},
                      legend=LEGEND_BELOW, margin={"t": 20, "l": 10, "r": 10, "b": 10})
    return fig


def category_flip_heatmap(df: pd.DataFrame, value: str = "flip_rate", branches: dict | None = None) -> go.Figure:
    """``perturb.category_flips`` as labels x checkpoints, coloured by ``value``; a CPO run's column stands
    right after its start's, labelled as a run."""
    order = branch_order(df.drop_duplicates("checkpoint").sort_values("step")["checkpoint"].tolist(), branches)
    table = df.pivot_table(index="gold", columns="checkpoint", values=value).reindex(columns=order)
    reverse = value == "flip_rate"
    fig = go.Figure(go.Heatmap(z=table.to_numpy(dtype=float), x=[branch_label(c, branches) for c in table.columns],
                               y=[_esc(i) for i in table.index], zmin=0, zmax=1, texttemplate="%{z:.2f}",
                               colorscale="RdYlGn_r" if reverse else "RdYlGn", colorbar={"title": value},
                               hovertemplate="%{y} at %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(height=max(300, 26 * len(table) + 150), margin={"t": 20, "l": 10, "r": 10, "b": 10},
                      yaxis={"autorange": "reversed", "dtick": 1}, xaxis=EVERY_CATEGORY)
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
    fig.update_layout(height=360, legend=LEGEND_BELOW, margin={"t": 40, "l": 10, "r": 10, "b": 10})
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
    fig.update_layout(barmode="group", height=400, yaxis={"range": [0, 1.02], "title": "share of held-out studies"},
                      legend=LEGEND_BELOW, margin={"t": 20, "l": 10, "r": 10, "b": 10})
    return fig


def start_vs_repaired(pair, start: str, repaired: str) -> go.Figure:
    """One trajectory under a CPO run's start and the repaired model (``core.models.branches.trajectory_pair``): the
    gold-answer belief of both on one plot (top); per CoT token, KL(repaired || start) and the change of the
    token's log-probability (bottom, nats)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.55, 0.45])
    b, t = pair.beliefs, pair.tokens
    for role, name, color, dash in (("start", start, "#264653", "dot"), ("repaired", repaired, "#6a4c93", "solid")):
        fig.add_trace(go.Scatter(x=b["position"], y=b[f"gold_prob_{role}"], name=f"{role}: {_esc(name)}", mode="lines",
                                 line={"color": color, "dash": dash, "width": 2},
                                 customdata=[_esc(a) for a in b[f"answer_{role}"]],
                                 hovertemplate=f"{role} · position %{{x}}<br>gold belief %{{y:.3f}}"
                                 "<br>answer now: %{customdata}<extra></extra>"), row=1, col=1)
    tokens = [_esc(x) for x in t["token"]]
    if t["kl_to_start"].notna().any():
        fig.add_trace(go.Bar(x=t["position"], y=t["kl_to_start"], name="KL(repaired ‖ start)", marker_color="#e76f51",
                             customdata=tokens, hovertemplate="%{customdata}<br>KL to start %{y:.4f}<extra></extra>"),
                      row=2, col=1)
    fig.add_trace(go.Scatter(x=t["position"], y=t["logprob_change"], name="log-prob change of the token",
                             mode="lines", line={"color": "#2a9d8f", "width": 1}, customdata=tokens,
                             hovertemplate="%{customdata}<br>log p repaired - start %{y:+.3f}<extra></extra>"),
                  row=2, col=1)
    fig.add_vline(x=0, line_dash="dot", line_color="#888")
    fig.update_yaxes(title_text="P(gold answer)", range=[-0.02, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="nats", row=2, col=1)
    fig.update_xaxes(title_text="position (negative: inside the report)", row=2, col=1)
    fig.update_layout(height=480, legend=LEGEND_BELOW, margin={"t": 20, "l": 10, "r": 10, "b": 10})
    return fig
