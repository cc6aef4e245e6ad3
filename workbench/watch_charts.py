"""Pure chart builders of the Watch page: a watch's drift curves beside the trainer's own loss and reward, alarms
marked on the step axis. Plain data in, ``plotly`` figure out (tested directly)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.charts import PROBE_ACCURACY, _esc

DRIFT = [("final_gold_prob", "final gold-answer belief", "#264653", "solid", 1),
         ("accuracy", PROBE_ACCURACY, "#2a9d8f", "dot", 1),
         ("share_detrimental", "share of detrimental positions", "#d62828", "solid", 1),
         ("kl_base", "KL to base", "#e76f51", "solid", 2), ("kl_prev", "KL to previous step", "#f4a261", "dash", 2),
         ("entropy", "CoT entropy", "#6a4c93", "dot", 2)]
TRAINER = [("loss", "trainer loss", "#495057", "solid"), ("reward", "trainer reward", "#2b9348", "solid")]


def watch_curves(summary: pd.DataFrame, history: pd.DataFrame, alarms: list[dict]) -> go.Figure:
    """Three panels over the step axis: beliefs and shares (scored checkpoints), KL and entropy, and the trainer's
    loss and reward from its log history (every logged step). Each alarm is a dashed line at its step."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.4, 0.3, 0.3])
    names = [_esc(c) for c in summary["checkpoint"]] if len(summary) else []
    for col, label, color, dash, row in DRIFT:
        if col in summary and summary[col].notna().any():
            fig.add_trace(go.Scatter(x=summary["step"], y=summary[col], name=label, mode="lines+markers",
                                     line={"color": color, "dash": dash}, customdata=names,
                                     hovertemplate="%{customdata}<br>" + label + ": %{y:.3f}<extra></extra>"),
                          row=row, col=1)
    for col, label, color, dash in TRAINER:
        if col in history and history[col].notna().any():
            h = history.dropna(subset=[col])
            fig.add_trace(go.Scatter(x=h["step"], y=h[col], name=label, mode="lines", line={"color": color, "dash": dash},
                                     hovertemplate="step %{x}<br>" + label + ": %{y:.3f}<extra></extra>"), row=3, col=1)
    for step, rules in _alarm_steps(alarms).items():
        fig.add_vline(x=step, line={"color": "#d62828", "dash": "dash", "width": 1.5})  # across the three panels
        fig.add_annotation(x=step, xref="x", y=1.0, yref="y domain", text=_esc("alarm: " + ", ".join(rules)),
                           showarrow=False, xanchor="left", yanchor="bottom", font={"size": 11, "color": "#d62828"})
    fig.update_yaxes(title_text="share", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="nats", row=2, col=1)
    fig.update_yaxes(title_text="trainer log", row=3, col=1)
    fig.update_xaxes(title_text="training step", row=3, col=1)
    fig.update_layout(height=620, legend={"orientation": "h", "y": -0.12}, margin={"t": 30, "l": 10, "r": 10})
    return fig


def _alarm_steps(alarms: list[dict]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for a in alarms:
        if isinstance(a.get("step"), int):
            out.setdefault(a["step"], []).append(str(a.get("rule", "")))
    return out


def alarm_table(alarms: list[dict]) -> pd.DataFrame:
    """One row per alarm, newest first: step, rule, figure, value, the message."""
    rows = [{"step": a.get("step"), "rule": a.get("rule"), "figure": a.get("figure"), "value": a.get("value"),
             "message": a.get("message")} for a in alarms]
    df = pd.DataFrame(rows, columns=["step", "rule", "figure", "value", "message"])
    return df.iloc[::-1].reset_index(drop=True)


def evidence_tables(alarm: dict) -> dict[str, pd.DataFrame]:
    """An alarm's evidence as tables: the tokens and contexts that drove it (the explorer opens its trajectories)."""
    ev = alarm.get("evidence") or {}
    return {k: pd.DataFrame(ev[k]) for k in ("tokens", "contexts")  # rows: a list of objects, else left out
            if isinstance(ev.get(k), list) and ev[k] and all(isinstance(r, dict) for r in ev[k])}
