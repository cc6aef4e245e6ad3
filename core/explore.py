"""Views of an analysis for the drift explorer: per-trajectory rankings and checkpoint x token matrices.

    rows = trajectory_table(analysis.beliefs, analysis.effects)       # one row per trajectory, drift score
    m = token_matrix(analysis.tokens, analysis.effects, "test-00012", "kl_base")
    m.values        # checkpoints x completion positions
    m.tokens        # the token strings on the position axis

Pure pandas; the charts in ``workbench.charts`` draw what these return.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core import drift

# metric -> (label, table it comes from, colour scale is diverging around 0)
METRICS: dict[str, tuple[str, str, bool]] = {
    "prob": ("probability of the token", "tokens", False),
    "entropy": ("entropy of the next-token distribution (nats)", "tokens", False),
    "kl_base": ("KL to the base model (nats)", "tokens", False),
    "kl_prev": ("KL to the previous checkpoint (nats)", "tokens", False),
    # labels read on their own (a select box may cut them): what it is first, its sign last
    "effect": ("belief effect: gold-answer belief change on reading the token", "effects", True),
    "effect_drift": ("effect drift: belief effect minus the base model's (< 0 detrimental)", "effects", True),
}


@dataclass
class TokenMatrix:
    metric: str
    checkpoints: list[str]  # rows, in series order
    positions: list[int]  # columns: completion-relative token positions
    tokens: list[str]  # the token read at each position
    values: np.ndarray  # len(checkpoints) x len(positions), NaN where not measured
    hover: list[list[str]]  # per cell, plain text (lines split by \n): the token, its probability, the top-k
    direction: np.ndarray  # per cell: "detrimental" | "beneficial" | "neutral" | ""


def trajectory_table(beliefs: pd.DataFrame, effects: pd.DataFrame, records: list[dict] | None = None) -> pd.DataFrame:
    """One row per trajectory: its gold label, the final gold belief under the base and at the checkpoint
    where it fell most, that drift (negative = the checkpoint believes the gold answer less), the answers,
    and how many positions turned detrimental / beneficial. Sorted most detrimental first."""
    fin = drift.final_beliefs(beliefs)
    base_rows = fin[drift.is_base(fin)]
    base = base_rows.set_index("traj_id")
    others = fin[~fin.index.isin(base_rows.index)]
    if others.empty:
        others = base_rows
    worst = others.loc[others.groupby("traj_id")["gold_prob"].idxmin()].set_index("traj_id")
    counts = effects.assign(det=effects["direction"] == "detrimental", ben=effects["direction"] == "beneficial") \
        .groupby("traj_id")[["det", "ben"]].sum()
    out = pd.DataFrame({
        "traj_id": base.index,
        "gold": base["gold"].values,
        "base_answer": base["answer"].values,
        "base_belief": base["gold_prob"].values,
    }).set_index("traj_id")
    out["worst_checkpoint"] = worst["checkpoint"]
    out["worst_answer"] = worst["answer"]
    out["worst_belief"] = worst["gold_prob"]
    out["drift"] = out["worst_belief"] - out["base_belief"]
    out["detrimental"] = counts["det"].reindex(out.index).fillna(0).astype(int)
    out["beneficial"] = counts["ben"].reindex(out.index).fillna(0).astype(int)
    out = out.reset_index()
    if records is not None:
        text = {r["id"]: r.get("completion", "") for r in records}
        out["completion"] = out["traj_id"].map(text)
    return out.sort_values("drift", kind="stable").reset_index(drop=True)


def filter_trajectories(table: pd.DataFrame, labels: list[str] | None = None, max_drift: float | None = None,
                        contains: str = "", ids: list[str] | None = None) -> pd.DataFrame:
    """Rows of ``trajectory_table`` with a gold label in ``labels``, a drift at most ``max_drift``, a
    completion containing ``contains`` (case-insensitive) and an id in ``ids`` (each filter optional)."""
    keep = pd.Series(True, index=table.index)
    if labels:
        keep &= table["gold"].isin(labels)
    if max_drift is not None:
        keep &= table["drift"] <= max_drift
    if contains.strip() and "completion" in table:
        keep &= table["completion"].str.contains(contains.strip(), case=False, regex=False, na=False)
    if ids is not None:
        keep &= table["traj_id"].isin(ids)
    return table[keep].reset_index(drop=True)


def token_matrix(tokens: pd.DataFrame, effects: pd.DataFrame, traj_id: str, metric: str,
                 include_prompt: bool = False) -> TokenMatrix:
    """The checkpoints x tokens matrix of ``metric`` for one trajectory (see ``METRICS``): the completion's
    tokens, and with ``include_prompt`` (belief metrics only: token metrics exist for the completion) the
    report's tokens before them at negative positions."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
    tok = tokens[tokens["traj_id"] == traj_id]
    if tok.empty:
        raise KeyError(f"trajectory {traj_id!r} is not in the analysis")
    order = drift.checkpoint_order(tok)
    positions = sorted(tok["position"].unique().tolist())
    first = tok[tok["checkpoint"] == order[0]].set_index("position")
    names = [str(first["token"].get(p, "")) for p in positions]
    eff = effects[effects["traj_id"] == traj_id]
    by_belief = METRICS[metric][1] == "effects"
    if by_belief and include_prompt:
        read = eff[eff["position"] < 0].drop_duplicates("position").sort_values("position")
        positions = read["position"].tolist() + positions
        names = read["token"].astype(str).tolist() + names
    else:
        eff = eff[eff["position"] >= 0]
    source = eff if by_belief else tok
    grid = _place(source, source[metric].to_numpy(dtype=float), order, positions, np.nan)
    directions = _place(eff, eff["direction"].to_numpy(dtype=object), order, positions, "")
    hover = _hover_grid(tok, order, positions, names)
    return TokenMatrix(metric, order, positions, names, grid, hover, directions)


def _place(df: pd.DataFrame, values: np.ndarray, order: list[str], positions: list[int], fill) -> np.ndarray:
    """``values`` (one per row of ``df``) in a checkpoints x positions grid, the first row of a cell winning;
    cells without a row hold ``fill``. Index arithmetic, not a pivot table (about 50x faster per trajectory)."""
    rows = pd.Index(order).get_indexer(df["checkpoint"])
    cols = pd.Index(positions).get_indexer(df["position"])
    grid = np.full((len(order), len(positions)), fill, dtype=values.dtype)
    keep = np.flatnonzero((rows >= 0) & (cols >= 0))[::-1]  # reversed: the first row of a cell is written last
    grid[rows[keep], cols[keep]] = values[keep]
    return grid


def _hover_grid(tok: pd.DataFrame, order: list[str], positions: list[int], names: list[str]) -> list[list[str]]:
    """Per cell: the token, its probability and rank, the top-k alternatives; built column-wise (one string
    per token row), then placed by a pivot; cells without a score show the token alone."""
    text = tok["token"].astype(str).map(repr) + " p=" + tok["prob"].map("{:.3f}".format) + \
        " rank " + tok["rank"].astype(int).astype(str)
    if "top_tokens" in tok:
        alts = [", ".join(f"{a!r} {q:.3f}" for a, q in zip(ts, ps, strict=True)) for ts, ps in zip(tok["top_tokens"], tok["top_probs"], strict=True)]
        text = text + "\ntop: " + pd.Series(alts, index=tok.index)
    values = _place(tok, text.to_numpy(dtype=object), order, positions, None)
    plain = np.array([repr(t) for t in names], dtype=object)
    return np.where(values == None, plain[None, :], values).tolist()  # noqa: E711 - elementwise on objects


def belief_path(beliefs: pd.DataFrame, traj_id: str) -> pd.DataFrame:
    """The probed beliefs of one trajectory along its positions, every checkpoint, series order."""
    b = beliefs[beliefs["traj_id"] == traj_id]
    if b.empty:
        raise KeyError(f"trajectory {traj_id!r} is not in the analysis")
    order = {c: i for i, c in enumerate(drift.checkpoint_order(b))}
    return b.assign(_o=b["checkpoint"].map(order)).sort_values(["_o", "position"]).drop(columns="_o")


def label_columns(beliefs: pd.DataFrame) -> list[str]:
    return [c for c in beliefs.columns if c.startswith("p:")]


def top_labels(path: pd.DataFrame, n: int = 5) -> list[str]:
    """The ``n`` answer labels with the highest peak probability along a belief path (gold first)."""
    cols = label_columns(path)
    peaks = path[cols].max().sort_values(ascending=False)
    gold = path["gold"].dropna().iloc[0] if path["gold"].notna().any() else None
    chosen = [c[2:] for c in peaks.index[:n]]
    if gold and gold not in chosen:
        chosen = [gold, *chosen[: n - 1]]
    return sorted(chosen, key=lambda y: (y != gold, -peaks[f"p:{y}"]))


def concept_names(graph, concept: str) -> list[str]:
    """Every name a concept is written under: its node id, then its label and synonyms (``concepts.names``).
    A concept the graph does not hold (or no graph) is written under its own name only."""
    from core import concepts

    if graph is None or concept not in graph:
        return [concept]
    return list(dict.fromkeys([concept, *concepts.names(graph, concept)]))


DRIVER_KINDS = ("token", "concept", "context")


def driver_trajectories(kind: str, row: dict, records: list[dict], graph=None) -> tuple[list[str], str]:
    """The trajectories a driver row (of ``by_token`` / ``by_concept`` / ``by_context``) happens in, and what
    that filter is in words. A token row lists its trajectories; a concept is found by any of its names; a
    context by its last word."""
    if kind == "token":
        return list(row["trajectories"]), f"token {row['token']!r} under {row['checkpoint']}"
    if kind == "concept":
        return (concept_trajectories(records, concept_names(graph, row["concept"])),
                f"concept {row['concept']!r}")
    if kind == "context":
        return (concept_trajectories(records, [row["context"].split(" ")[-1]]),
                f"context {row['context']!r} under {row['checkpoint']}")
    raise ValueError(f"driver kind {kind!r}: expected one of {DRIVER_KINDS}")


def sort_drivers(table: pd.DataFrame, kind: str, checkpoint: str = "all", direction: str = "all") -> pd.DataFrame:
    """Driver rows of one checkpoint (or ``"all"``) and direction (``detrimental`` | ``beneficial`` | ``all``),
    strongest first: by effect drift (most negative first, most positive for beneficial), a context by its
    mean KL to the base (largest first)."""
    t = table if checkpoint == "all" else table[table["checkpoint"] == checkpoint]
    if direction != "all":
        t = t[t["direction"] == direction]
    by = "mean_kl_base" if kind == "context" else "mean_effect_drift"
    return t.sort_values(by, ascending=(kind != "context") == (direction != "beneficial")).reset_index(drop=True)


def concept_trajectories(records: list[dict], surfaces: list[str]) -> list[str]:
    """Ids of the trajectories whose completion mentions any of ``surfaces`` (whole words, any case)."""
    import re

    if not surfaces:
        return []
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(s)}(?!\w)" for s in surfaces), re.IGNORECASE)
    return [r["id"] for r in records if pattern.search(r.get("completion", ""))]
