"""The drift step over whole tables: the reference that the part-by-part computation (``core.drift.findings.
DriftParts``, ``core.drift.analysis.assemble_parts``) is tested against, not code the engine runs.

Each table aggregates the whole scoring and probe tables at once (pandas groupby over every row); the engine
adds partial sums part by part and must give the same tables to float rounding. The reference shares the
row preparation (``_context_rows``) and the final assembly (``_summary``, ``_context_table``) with the engine,
and computes every aggregation on its own.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd

from core.drift.analysis import Analysis, AnalysisConfig
from core.drift.findings import (
    SUMMARY_KL,
    TAU,
    _context_rows,
    _context_table,
    _summary,
    concept_spans,
    concept_surfaces,
    final_beliefs,
    is_base,
    span_sums,
    step_changes,
    token_effects,
)
from core.io.trajectories import Encoded


def drivers_by_token(effects: pd.DataFrame, min_count: int = 5) -> pd.DataFrame:
    """Tokens ranked by total effect drift per checkpoint (most detrimental first)."""
    if effects.empty:  # a single probe position per trajectory reads no tokens
        return pd.DataFrame(columns=["checkpoint", "step", "token", "region", "n", "mean_effect_drift", "direction"])
    df = effects[~is_base(effects)].assign(key=effects["token"].astype(str).str.strip())
    df = df[df["key"] != ""]
    agg = df.assign(drift64=df["effect_drift"].astype(np.float64)).groupby(["checkpoint", "step", "key", "region"]).agg(
        n=("effect_drift", "size"), mean_effect_drift=("drift64", "mean"),
        total_effect_drift=("effect_drift", "sum"),
        share_detrimental=("direction", lambda s: (s == "detrimental").mean()),
        share_beneficial=("direction", lambda s: (s == "beneficial").mean()),
        trajectories=("traj_id", lambda s: sorted(set(s))[:50])).reset_index()
    agg = agg[agg["n"] >= min_count].rename(columns={"key": "token"})
    agg["direction"] = np.where(agg["mean_effect_drift"] < 0, "detrimental", "beneficial")
    return agg.sort_values(["step", "total_effect_drift"]).reset_index(drop=True)


def drivers_by_concept(effects: pd.DataFrame, encoded: list[Encoded], graph: nx.DiGraph, tau: float = TAU) -> pd.DataFrame:
    """Concepts (findings of the graph) ranked by the effect drift of reading their mentions, per checkpoint."""
    surfaces = concept_surfaces(graph)
    spans = [(e.id, c, a, b) for e in encoded for c, a, b in concept_spans(e, surfaces)]
    if not spans or effects.empty:
        return pd.DataFrame(columns=["checkpoint", "step", "concept", "n", "mean_effect_drift"])
    per = span_sums(effects, pd.DataFrame(spans, columns=["traj_id", "concept", "first", "end"]))
    per = per[~is_base(per)]
    per = per.assign(det=per["effect_drift"] < -tau, ben=per["effect_drift"] > tau)
    agg = per.groupby(["checkpoint", "step", "concept"]).agg(
        n=("effect_drift", "size"), mean_effect_drift=("effect_drift", "mean"),
        share_detrimental=("det", "mean"), share_beneficial=("ben", "mean")).reset_index()
    agg["direction"] = np.where(agg["mean_effect_drift"] < 0, "detrimental", "beneficial")
    return agg.sort_values(["step", "mean_effect_drift"]).reset_index(drop=True)


def checkpoint_summary(scores: pd.DataFrame, beliefs: pd.DataFrame, effects: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint: probed accuracy, mean gold belief at the end, mean KL (CoT tokens), detrimental share."""
    cot = scores[scores["in_think"]] if scores["in_think"].any() else scores
    # means of float64 (pandas' own float32 means are float32 or float64 depending on the rows' order)
    kls = cot.astype({c: np.float64 for c in SUMMARY_KL}).groupby(["checkpoint", "step"])[list(SUMMARY_KL)].mean()
    kls = kls.reset_index()
    det = effects.groupby("checkpoint")["direction"].agg(
        share_detrimental=lambda s: (s == "detrimental").mean(),
        share_beneficial=lambda s: (s == "beneficial").mean()).reset_index()
    return _summary(kls, final_beliefs(beliefs), det)


def drift_by_context(tokens: pd.DataFrame, n: int = 2, min_count: int = 5) -> pd.DataFrame:
    """Where the next-token distribution moved most, grouped by the ``n`` tokens read just before.

    Per checkpoint and context (e.g. "opacity suggests"): mean KL to base, mean change of the actual
    token's log-prob vs base (< 0: the trajectory's own reasoning became less likely: detrimental on
    gold trajectories), the share of positions whose top-1 token changed, and the most common new top-1.
    """
    m = _context_rows(tokens, n)
    m = m.astype({"kl_base": np.float64, "delta_logprob": np.float64})  # means of float64 (as in checkpoint_summary)
    agg = m.groupby(["checkpoint", "step", "context"]).agg(
        n=("kl_base", "size"), mean_kl_base=("kl_base", "mean"), mean_delta_logprob=("delta_logprob", "mean"),
        share_top1_changed=("top1_changed", "mean")).reset_index()
    changed = m[m["top1_changed"]].groupby(["checkpoint", "context"])["top1"].agg(
        lambda s: s.value_counts().index[0]).rename("new_top1")
    return _context_table(agg, changed, min_count)


def assemble(cfg: AnalysisConfig, records: list[dict], encoded, graph, tokens: pd.DataFrame,
             beliefs: pd.DataFrame, starts: dict[str, str] | None = None) -> Analysis:
    """The analysis from the whole scoring and probe tables (what ``assemble_parts`` computes part by part).
    ``starts``: CPO run -> its start checkpoint (``series.branch_starts``)."""
    effects = token_effects(beliefs, encoded, cfg.tau)
    by_concept = drivers_by_concept(effects, encoded, graph, cfg.tau) if graph is not None else pd.DataFrame()
    return Analysis(cfg, tokens, beliefs, effects, checkpoint_summary(tokens, beliefs, effects),
                    drivers_by_token(effects), by_concept, drift_by_context(tokens),
                    step_changes(beliefs, branches=starts), records)
