"""Views of an analysis for the drift explorer: per-trajectory rankings and checkpoint x token matrices.

    rows = trajectory_table(analysis.beliefs, analysis.effects)       # one row per trajectory, drift score
    m = token_matrix(analysis.tokens, analysis.effects, "test-00012", "kl_base")
    m.values        # checkpoints x completion positions
    m.tokens        # the token strings on the position axis
    w = window(m, start=400, width=200, tokens=rows_400_to_599)   # 200 columns, hover text for them only
    strip = minimap(m)                                             # the whole length, downsampled

Pure pandas; the UI's chart builders draw what these return.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.drift import findings as drift

# metric -> (label, table it comes from, colour scale is diverging around 0)
METRICS: dict[str, tuple[str, str, bool]] = {
    "prob": ("probability of the token", "tokens", False),
    "entropy": ("entropy of the next-token distribution (nats)", "tokens", False),
    "kl_base": ("KL to the base model (nats)", "tokens", False),
    "kl_prev": ("KL to the previous checkpoint (a CPO run: to its start) (nats)", "tokens", False),
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
    hover: list[list[str]] | None  # per cell, plain text (lines split by \n): the token, its probability, the
    # top-k; None when not built (a long trajectory's matrix: hover text is built per window, see ``window``)
    direction: np.ndarray  # per cell: "detrimental" | "beneficial" | "neutral" | ""
    first: int = 0  # column of the whole trajectory's matrix this one starts at (a window's offset)
    total: int | None = None  # columns of the whole trajectory's matrix (None: this matrix is whole)

    @property
    def width(self) -> int:
        return self.total if self.total is not None else len(self.positions)


@dataclass
class Minimap:
    """A whole trajectory's matrix in one strip: per bin of columns, the cell of largest magnitude (signed)."""
    starts: np.ndarray  # first column of each bin
    ends: np.ndarray  # one past its last column
    positions: np.ndarray  # token position of each bin's first column
    last_positions: np.ndarray  # and of its last
    values: np.ndarray  # the bin's peak, NaN where nothing was measured
    lo: float  # the whole matrix's smallest and largest value: one colour scale for every window
    hi: float


def trajectory_table(beliefs: pd.DataFrame, effects: pd.DataFrame, records: list[dict] | None = None) -> pd.DataFrame:
    """One row per trajectory: its gold label, the final gold belief under the base and at the checkpoint
    where it fell most, that drift (negative = the checkpoint believes the gold answer less), the answers,
    and how many positions turned detrimental / beneficial. Sorted most detrimental first. Without beliefs
    (an analysis scored without the probe) one row per record, its belief columns empty."""
    if beliefs.empty:
        return _unprobed_table(records or [])
    fin = drift.final_beliefs(beliefs)
    base_rows = fin[drift.is_base(fin)]
    base = base_rows.set_index("traj_id")
    others = fin[~fin.index.isin(base_rows.index)]  # none (a base-only analysis): no worst checkpoint, drift NaN
    others = others.dropna(subset=["gold_prob"])  # a gold answer outside the probe's labels has no belief
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


def _unprobed_table(records: list[dict]) -> pd.DataFrame:
    nan = np.full(len(records), np.nan)
    return pd.DataFrame({"traj_id": [str(r["id"]) for r in records], "gold": [r.get("label") for r in records],
                         "base_answer": None, "base_belief": nan, "worst_checkpoint": None, "worst_answer": None,
                         "worst_belief": nan, "drift": nan, "detrimental": 0, "beneficial": 0,
                         "completion": [r.get("completion", "") for r in records]})


def images_of(records: list[dict], traj_id: str) -> list[str]:
    """The image paths of trajectory ``traj_id`` (its record's ``images``; empty for text-only records)."""
    return next((list(r.get("images") or []) for r in records if str(r.get("id")) == traj_id), [])


def filter_trajectories(table: pd.DataFrame, labels: list[str] | None = None, max_drift: float | None = None,
                        contains: str = "", ids: list[str] | None = None) -> pd.DataFrame:
    """Rows of ``trajectory_table`` with a gold label in ``labels``, a drift at most ``max_drift``, a
    completion containing ``contains`` (case-insensitive) and an id in ``ids`` (each filter optional)."""
    keep = pd.Series(True, index=table.index)
    if labels:
        keep &= table["gold"].isin(labels)
    if max_drift is not None:  # a trajectory whose drift was not measured (no probed gold) stays listed
        keep &= table["drift"].isna() | (table["drift"] <= max_drift)
    if contains.strip() and "completion" in table:
        keep &= table["completion"].str.contains(contains.strip(), case=False, regex=False, na=False)
    if ids is not None:
        keep &= table["traj_id"].isin(ids)
    return table[keep].reset_index(drop=True)


def token_matrix(tokens: pd.DataFrame, effects: pd.DataFrame, traj_id: str, metric: str,
                 include_prompt: bool = False, hover: bool = True) -> TokenMatrix:
    """The checkpoints x tokens matrix of ``metric`` for one trajectory (see ``METRICS``): the completion's
    tokens, and with ``include_prompt`` (belief metrics only: token metrics exist for the completion) the
    report's tokens before them at negative positions. ``hover=False`` leaves the hover text to ``window``."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
    tok = tokens[tokens["traj_id"] == traj_id]
    if tok.empty:
        raise KeyError(f"trajectory {traj_id!r} is not in the analysis")
    order = drift.checkpoint_order(tok)
    positions = sorted(tok["position"].unique().tolist())
    first = tok[tok["checkpoint"] == order[0]].drop_duplicates("position").set_index("position")["token"]
    names = first.reindex(positions).fillna("").astype(str).tolist()  # one lookup for all, not one per token
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
    hover = _hover_grid(tok, order, positions, names) if hover else None
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
    plain = np.array([repr(t) for t in names], dtype=object)
    if tok.empty:  # a window over the report alone: no token rows (an empty float column would not add to str)
        return np.broadcast_to(plain[None, :], (len(order), len(names))).tolist()
    text = tok["token"].astype(str).map(repr) + " p=" + tok["prob"].map("{:.3f}".format) + \
        " rank " + tok["rank"].astype(int).astype(str)
    if "top_tokens" in tok:
        alts = [", ".join(f"{a!r} {q:.3f}" for a, q in zip(ts, ps, strict=True)) for ts, ps in zip(tok["top_tokens"], tok["top_probs"], strict=True)]
        text = text + "\ntop: " + pd.Series(alts, index=tok.index)
    values = _place(tok, text.to_numpy(dtype=object), order, positions, None)
    return np.where(values == None, plain[None, :], values).tolist()  # noqa: E711 - elementwise on objects


def window_column(positions: list[int], start: int, width: int) -> int:
    """The first column of a ``width``-column window starting at token position ``start`` (or the next one
    measured), moved back so that the window is full."""
    c = int(np.searchsorted(np.asarray(positions), start))
    return max(0, min(c, len(positions) - width))


def window(m: TokenMatrix, start: int, width: int, tokens: pd.DataFrame | None = None) -> TokenMatrix:
    """``width`` columns of ``m`` from token position ``start``; hover text built for those cells only, from
    ``tokens`` (the window's token rows; with ``top_tokens`` / ``top_probs`` the alternatives are listed)."""
    c0 = window_column(m.positions, start, width)
    cols = slice(c0, c0 + width)
    positions, names = m.positions[cols], m.tokens[cols]
    hover = _hover_grid(tokens, m.checkpoints, positions, names) if tokens is not None else None
    return TokenMatrix(m.metric, m.checkpoints, positions, names, m.values[:, cols], hover, m.direction[:, cols],
                       first=m.first + c0, total=m.width)


def centred_start(positions: list[int], target: int, width: int) -> int:
    """The start position of the full window that has ``target`` (or the next position measured) in its middle."""
    c = int(np.searchsorted(np.asarray(positions), target))
    return int(positions[max(0, min(c - width // 2, len(positions) - width))])


def _peaks(values: np.ndarray) -> np.ndarray:
    """Per column, the value of largest magnitude, sign kept (NaN where the column holds none): one number
    per token that says how far any checkpoint went, in either direction."""
    mag = np.where(np.isnan(values), -1.0, np.abs(values))  # (C, N); NaN never wins
    return values[mag.argmax(0), np.arange(values.shape[1])]  # (N,)


def strongest_position(m: TokenMatrix) -> int | None:
    """The token position whose value is largest in magnitude under any checkpoint (None: nothing measured)."""
    peaks = np.abs(_peaks(m.values))
    return None if np.isnan(peaks).all() else int(m.positions[int(np.nanargmax(peaks))])


def next_detrimental(m: TokenMatrix, after: int) -> int | None:
    """The first position after ``after`` that is detrimental under some checkpoint, from the start again
    past the last one (None: there is none)."""
    found = np.asarray(m.positions)[(m.direction == "detrimental").any(axis=0)]
    if not len(found):
        return None
    later = found[found > after]
    return int(later[0] if len(later) else found[0])


def minimap(m: TokenMatrix, bins: int = 400) -> Minimap:
    """``m`` downsampled to at most ``bins`` columns for the strip above a window (see ``Minimap``)."""
    peaks = _peaks(m.values)
    edges = np.unique(np.linspace(0, len(peaks), min(bins, len(peaks)) + 1).astype(int))
    starts, ends = edges[:-1], edges[1:]
    values = np.array([_peaks(peaks[a:b, None]).item()
                       for a, b in zip(starts, ends, strict=True)])  # a loop over bins (<= 400), not over tokens
    finite = m.values[np.isfinite(m.values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    at = np.asarray(m.positions)
    return Minimap(starts, ends, at[starts], at[ends - 1], values, lo, hi)


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
    from core.graph import concepts

    if graph is None or concept not in graph:
        return [concept]
    return list(dict.fromkeys([concept, *concepts.names(graph, concept)]))


DRIVER_KINDS = ("token", "concept", "context")


def driver_trajectories(kind: str, row: dict, records: list[dict], graph=None) -> tuple[list[str], str]:
    """The trajectories a driver row (of ``by_token`` / ``by_concept`` / ``by_context``) happens in, and what
    that filter is in words. A token row lists its trajectories; a concept is found by any of its names; a
    context by all of its words, in order."""
    if kind == "token":
        ids = list(row["trajectories"])
        more = f" (the first {len(ids)} by id: a token's row lists no more)" if len(ids) >= drift.TRAJECTORIES_LISTED \
            else ""
        return ids, f"token {row['token']!r} under {row['checkpoint']}{more}"
    if kind == "concept":
        return (concept_trajectories(records, concept_names(graph, row["concept"])),
                f"concept {row['concept']!r}")
    if kind == "context":
        return (context_trajectories(records, row["context"]), f"context {row['context']!r} under {row['checkpoint']}")
    raise ValueError(f"driver kind {kind!r}: expected one of {DRIVER_KINDS}")


def context_trajectories(records: list[dict], context: str) -> list[str]:
    """Ids of the trajectories whose completion holds the whole ``context`` (its tokens as the text has them,
    any run of white space between its words, any case): "lines suggests", not every "suggests"."""
    import re

    words = context.split()
    if not words:
        return []
    pattern = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)
    return [r["id"] for r in records if pattern.search(r.get("completion", ""))]


def most_drifted_first(ids: list[str], table: pd.DataFrame) -> list[str]:
    """``ids`` in the order of ``table`` (``trajectory_table``: most detrimental first), so the trajectory a
    driver row opens is its most drifted one, not the first in the file; ids the table lacks go last."""
    rank = {t: i for i, t in enumerate(table["traj_id"] if "traj_id" in table else table.index)}
    return sorted(ids, key=lambda t: rank.get(t, len(rank)))


def sort_drivers(table: pd.DataFrame, kind: str, checkpoint: str = "all", direction: str = "all") -> pd.DataFrame:
    """Driver rows of one checkpoint (or ``"all"``) and direction (``detrimental`` | ``beneficial`` | ``all``),
    strongest first: by effect drift (most negative first, most positive for beneficial), a context by its
    mean KL to the base (largest first)."""
    t = table if checkpoint == "all" else table[table["checkpoint"] == checkpoint]
    if direction != "all":
        t = t[t["direction"] == direction]
    by = "mean_kl_base" if kind == "context" else "mean_effect_drift"
    ascending = False if kind == "context" else direction != "beneficial"  # a context: largest KL first, either way
    return t.sort_values(by, ascending=ascending).reset_index(drop=True)


TEMPLATE_SHARE = 0.9  # a prompt token read this often per trajectory is the prompt's template, not its content


def content_drivers(table: pd.DataFrame, n_trajectories: int, min_count: int = 3) -> pd.DataFrame:
    """The token driver rows a reader can act on: a word (a letter or a digit in it), read at least ``min_count``
    times, and not the prompt's template (a prompt token read about once in every trajectory, such as
    "Question" or a chat template's "assistant"). On a small analysis the strongest mean effects otherwise
    come from prompt punctuation and boilerplate read once per study (".", "of", "Question")."""
    word = table["token"].astype(str).str.contains(r"[^\W_]", regex=True)
    template = (table["region"] == "prompt") & (table["n"] >= TEMPLATE_SHARE * max(1, n_trajectories))
    return table[word & ~template & (table["n"] >= min_count)].reset_index(drop=True)


def concept_trajectories(records: list[dict], surfaces: list[str]) -> list[str]:
    """Ids of the trajectories whose completion mentions any of ``surfaces`` (whole words, any case)."""
    import re

    if not surfaces:
        return []
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(s)}(?!\w)" for s in surfaces), re.IGNORECASE)
    return [r["id"] for r in records if pattern.search(r.get("completion", ""))]
