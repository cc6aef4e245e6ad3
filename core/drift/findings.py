"""Turn scores and beliefs into findings: where the reasoning drifted, and whether it helps or hurts.

Definitions (b_i(j) = probed probability of the gold answer under checkpoint i after reading j tokens):

    effect_i(t_j)      = b_i(j + 1) - b_i(j)                 how much reading token t_j moves belief to the gold answer
    effect_drift_i(t_j) = effect_i(t_j) - effect_base(t_j)   < -tau: detrimental, > tau: beneficial (default tau 0.05)
    belief_drift_i(j)  = b_i(j) - b_base(j)

Drift over steps is tested per trajectory, never per token (tokens of one trajectory are not independent):
for consecutive checkpoints, the paired differences of each trajectory's final gold belief go through a
sign-flip permutation test (Holm-corrected over the step pairs); Page-Hinkley (Page 1954) over the mean
final belief per step flags the first step of a sustained fall.
"""

from __future__ import annotations

import re

import networkx as nx
import numpy as np
import pandas as pd

from core.drift.config import TAU  # the config's default, named once
from core.graph import concepts
from core.io.trajectories import Encoded

BASE = "base"  # the series' name for the base model (core.models.series.BASE)


def is_base(df: pd.DataFrame) -> pd.Series:
    """Rows of the base checkpoint: named "base", else (tables from elsewhere) the smallest step."""
    return df["checkpoint"] == BASE if (df["checkpoint"] == BASE).any() else df["step"] == df["step"].min()


def checkpoint_order(df: pd.DataFrame) -> list[str]:
    """Checkpoints in series order: base first, then by step, ties in order of first appearance."""
    first = df.drop_duplicates("checkpoint")[["checkpoint", "step"]].reset_index(drop=True)
    first["base"] = ~is_base(first)
    return first.sort_values(["base", "step"], kind="stable")["checkpoint"].tolist()


def token_effects(beliefs: pd.DataFrame, encoded: list[Encoded], tau: float = TAU) -> pd.DataFrame:
    """One row per trajectory x checkpoint x read span (a token when probed at every position)."""
    b = beliefs[["traj_id", "checkpoint", "step", "position", "gold_prob"]].dropna(subset=["gold_prob"])
    b = b.sort_values(["traj_id", "step", "checkpoint", "position"])
    grp = b.groupby(["traj_id", "checkpoint"], sort=False)
    b = b.assign(next_position=grp["position"].shift(-1), gold_after=grp["gold_prob"].shift(-1)).dropna(
        subset=["next_position"])
    b["next_position"] = b["next_position"].astype(int)
    b = b.rename(columns={"gold_prob": "gold_before"})
    b["effect"] = b["gold_after"] - b["gold_before"]
    base = b[is_base(b)][["traj_id", "position", "effect", "gold_after"]].rename(
        columns={"effect": "effect_base", "gold_after": "gold_after_base"})
    df = b.merge(base, on=["traj_id", "position"], how="left")
    df["effect_drift"] = df["effect"] - df["effect_base"]
    df["belief_drift"] = df["gold_after"] - df["gold_after_base"]
    df["direction"] = np.select([df["effect_drift"] < -tau, df["effect_drift"] > tau],
                                ["detrimental", "beneficial"], "neutral")
    df["token"] = pd.Series(_span_texts(df, encoded), index=df.index, dtype=object)
    df["region"] = np.where(df["position"] < 0, "prompt", "cot")
    return df.drop(columns=["gold_after_base"])


def _span_texts(df: pd.DataFrame, encoded: list[Encoded]) -> np.ndarray:
    """The text read between ``position`` and ``next_position`` of each row: one array lookup for the
    one-token spans (every position), a join only for the longer ones (sentence ends)."""
    enc = {e.id: e for e in encoded}
    ids = list(enc)
    sizes = np.array([len(enc[i].tokens) for i in ids], dtype=np.int64)
    offset = pd.Series(np.concatenate([[0], np.cumsum(sizes)[:-1]]), index=ids)
    flat = np.array([t for i in ids for t in enc[i].tokens] + [""], dtype=object)
    start = df["traj_id"].map({i: enc[i].start for i in ids}).to_numpy(dtype=np.int64)
    n = df["traj_id"].map(dict(zip(ids, sizes, strict=True))).to_numpy(dtype=np.int64)
    a = start + df["position"].to_numpy(dtype=np.int64)
    b = start + df["next_position"].to_numpy(dtype=np.int64)
    single = (b == a + 1) & (a >= 0) & (a < n)
    out = flat[np.where(single, df["traj_id"].map(offset).to_numpy(dtype=np.int64) + a, len(flat) - 1)]
    for k in np.flatnonzero(~single):
        out[k] = "".join(enc[df["traj_id"].iat[k]].tokens[a[k]: b[k]])
    return out


def concept_surfaces(graph: nx.DiGraph) -> list[tuple[str, str]]:
    """(surface form, concept) for every finding's label and synonyms, longest first."""
    pairs = [(s, n) for n in concepts.findings(graph) for s in concepts.names(graph, n)]
    return sorted(pairs, key=lambda p: -len(p[0]))


def concept_spans(enc: Encoded, surfaces: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    """(concept, first, last+1) token positions (completion-relative) of each mention, longest match wins.
    A mention's tokens are found by bisection on the tokens' character offsets, not by a scan per mention."""
    import bisect
    from itertools import accumulate

    starts = [0, *accumulate(len(t) for t in enc.tokens)]  # character offset of each token, then the end
    text = "".join(enc.tokens)
    taken = np.zeros(len(text), dtype=bool)
    out = []
    for surface, concept in surfaces:
        for m in re.finditer(rf"(?<![\w]){re.escape(surface)}(?![\w])", text):
            if taken[m.start(): m.end()].any():
                continue
            taken[m.start(): m.end()] = True
            first = bisect.bisect_right(starts, m.start()) - 1  # the token holding the mention's first character
            last = bisect.bisect_left(starts, m.end()) - 1  # the last token starting before its end
            out.append((concept, first - enc.start, last + 1 - enc.start))
    return out


def span_sums(effects: pd.DataFrame, spans: pd.DataFrame, value: str = "effect_drift") -> pd.DataFrame:
    """Per span (traj_id, first, end) and checkpoint of its trajectory: the sum of ``value`` over the effect
    rows with first <= position < end, and their count (0-count pairs left out). Linear time: one cumulative
    sum over the effects sorted by (trajectory, checkpoint, position), each span's bounds found by bisection,
    its sum the difference of two cumulative sums. Never a mentions x positions join."""
    eff = effects[["traj_id", "checkpoint", "step", "position", value]].sort_values(
        ["traj_id", "checkpoint", "position"], kind="stable")
    g = eff.groupby(["traj_id", "checkpoint"], sort=False).ngroup().to_numpy()  # ascending along ``eff``
    pos = eff["position"].to_numpy(dtype=np.int64)
    lo_pos = min(pos.min(initial=0), int(spans["first"].min()))
    width = max(pos.max(initial=0), int(spans["end"].max())) - lo_pos + 2
    keys = g.astype(np.int64) * width + (pos - lo_pos)  # sorted: group-major, position within
    cs = np.concatenate([[0.0], np.cumsum(np.nan_to_num(eff[value].to_numpy(dtype=float)))])
    groups = eff.drop_duplicates(["traj_id", "checkpoint"])[["traj_id", "checkpoint", "step"]].assign(
        g=np.unique(g))
    m = spans.merge(groups, on="traj_id")  # mentions x checkpoints of their trajectory
    lo = np.searchsorted(keys, m["g"].to_numpy() * width + (m["first"].to_numpy() - lo_pos), "left")
    hi = np.searchsorted(keys, m["g"].to_numpy() * width + (m["end"].to_numpy() - lo_pos), "left")
    m = m.assign(**{value: cs[hi] - cs[lo], "n_positions": hi - lo})
    return m[m["n_positions"] > 0].drop(columns=["g"]).reset_index(drop=True)


def final_beliefs(beliefs: pd.DataFrame) -> pd.DataFrame:
    """The belief at each trajectory's last probe position, per checkpoint."""
    idx = beliefs.groupby(["traj_id", "checkpoint"])["position"].idxmax()
    return beliefs.loc[idx].reset_index(drop=True)


SUMMARY_KL = ("kl_base", "kl_prev", "js_base", "entropy")  # averaged over the CoT's tokens per checkpoint


def _summary(kls: pd.DataFrame, fin: pd.DataFrame, det: pd.DataFrame) -> pd.DataFrame:
    """The per-checkpoint summary from its three parts: mean KLs per (checkpoint, step), the final beliefs, and
    the detrimental / beneficial shares per checkpoint (combined parts, ``DriftParts``)."""
    # a trajectory whose own answer could not be read (or names no probed label) has no gold to compare with: out
    # of the accuracy (whose denominator, ``probed``, says how many counted), counted apart (``no_gold``), never
    # silently wrong
    fin = fin.assign(correct=fin["answer"] == fin["gold"], labelled=fin["gold"].notna() & fin["gold_prob"].notna())
    acc = fin.groupby(["checkpoint", "step"]).agg(final_gold_prob=("gold_prob", "mean"), probed=("labelled", "sum"),
                                                  no_gold=("labelled", lambda x: int((~x).sum()))).reset_index()
    right = fin[fin["labelled"]].groupby(["checkpoint", "step"])["correct"].mean().rename("accuracy").reset_index()
    acc = acc.merge(right, on=["checkpoint", "step"], how="left")
    if det.empty:  # no effects (no probe, or one probe position): the columns stay, empty
        det = pd.DataFrame({"checkpoint": pd.Series(dtype=object), "share_detrimental": pd.Series(dtype=float),
                            "share_beneficial": pd.Series(dtype=float)})
    # every scored checkpoint keeps its row (token drift), with NaN accuracy when nothing was probed
    out = kls.merge(acc, on=["checkpoint", "step"], how="left").merge(det, on="checkpoint", how="left")
    order = ["checkpoint", "step", "accuracy", "probed", "no_gold", "final_gold_prob", "kl_base", "kl_prev",
             "js_base", "entropy", "share_detrimental", "share_beneficial"]
    return out[order].sort_values("step", kind="stable").reset_index(drop=True)


def category_accuracy(beliefs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of the final probed answer per gold label (rows) and checkpoint (columns, by step), over the
    trajectories the summary's accuracy counts: a gold label the probe does not know (no ``gold_prob``) is left
    out, not counted as always wrong."""
    fin = final_beliefs(beliefs).dropna(subset=["gold", "gold_prob"])
    if fin.empty:
        return pd.DataFrame()
    fin = fin.assign(correct=fin["answer"] == fin["gold"])
    table = fin.pivot_table(index="gold", columns="checkpoint", values="correct", aggfunc="mean")
    return table[[c for c in checkpoint_order(fin) if c in table.columns]]


def sign_flip_test(diffs: np.ndarray, n_permutations: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value that the mean of paired differences is zero (random sign flips)."""
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) == 0 or np.allclose(diffs, 0):
        return 1.0
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_permutations, len(diffs)))
    null = np.abs((signs * diffs).mean(1))
    return float((1 + (null >= abs(diffs.mean())).sum()) / (n_permutations + 1))


def holm(pvalues: list[float]) -> list[float]:
    order = np.argsort(pvalues)
    adj, running = np.empty(len(pvalues)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adj[i] = running
    return adj.tolist()


def page_hinkley(values: list[float], delta: float = 0.005, threshold: float = 0.1) -> int | None:
    """Index of the first alarm for a sustained decrease of ``values`` (Page-Hinkley), or None."""
    mean, cum, peak = 0.0, 0.0, 0.0
    for t, x in enumerate(values, 1):
        mean += (x - mean) / t
        cum += mean - x - delta  # grows while x falls below the running mean
        peak = min(peak, cum)
        if cum - peak > threshold:
            return t - 1
    return None


def step_changes(beliefs: pd.DataFrame, alpha: float = 0.05, n_permutations: int = 2000,
                 branches: dict[str, str] | None = None) -> pd.DataFrame:
    """Per pair of consecutive checkpoints: mean change of the final gold belief, permutation p-value (Holm).
    ``branches`` (CPO run -> the checkpoint it started from) are not points of the step axis: each is
    compared with its start (``branch`` True), the RFT checkpoints with the previous RFT checkpoint, and
    Page-Hinkley runs over the RFT checkpoints only."""
    from core.models.branches import series_parents

    fb = final_beliefs(beliefs)
    order = checkpoint_order(fb)
    branches = {b: s for b, s in (branches or {}).items() if b in order}
    steps = dict(zip(fb["checkpoint"], fb["step"], strict=True))
    fin = fb.pivot(index="traj_id", columns="checkpoint", values="gold_prob")
    rows = []
    for b, a in series_parents(order, branches).items():
        d = (fin[b] - fin[a]).dropna().to_numpy()  # the trajectories with a gold belief under both
        rows.append({"from_checkpoint": a, "to_checkpoint": b, "from_step": steps[a], "to_step": steps[b],
                     "n_pairs": len(d),  # a test over none is no result: NaN, not a change of 0 (p 1)
                     "mean_change": d.mean() if len(d) else np.nan,
                     "p_value": sign_flip_test(d, n_permutations) if len(d) else np.nan, "branch": b in branches})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    tested = df["p_value"].notna()
    df["p_holm"] = np.nan
    if tested.any():
        df.loc[tested, "p_holm"] = holm(df.loc[tested, "p_value"].tolist())
    df["changed"] = df["p_holm"] < alpha
    df["direction"] = np.select([df["mean_change"] < 0, df["mean_change"] > 0], ["detrimental", "beneficial"], "")
    line = [c for c in order if c not in branches]
    alarm = page_hinkley([fin[c].mean() for c in line])
    df["page_hinkley_alarm"] = ~df["branch"] & (df["to_checkpoint"] == (line[alarm] if alarm is not None else None))
    return df


def _context_rows(tokens: pd.DataFrame, n: int) -> pd.DataFrame:
    """The non-base token rows with their ``n``-token context, their top-1 and the base's at that position,
    sorted by (trajectory, step, position). Per trajectory: a part of the tables gives its part of the rows."""
    t = tokens.sort_values(["traj_id", "step", "position"]).reset_index(drop=True)
    grp = t.groupby(["traj_id", "checkpoint"], sort=False)["token"]
    ctx = grp.shift(n).fillna("")
    for k in range(n - 1, 0, -1):
        ctx = ctx + grp.shift(k).fillna("")
    if "top1" in t:  # given (read column-wise from the stored lists, ``DriftParts``)
        top1 = t["top1"]
    else:
        top1 = t["top_tokens"].map(lambda x: x[0] if len(x) else "") if "top_tokens" in t else t["token"]
    t = t.assign(context=ctx.str.strip(), top1=top1)
    t = t[t["position"] >= n]  # positions with a full n-token context
    base = t[is_base(t)][["traj_id", "position", "logprob", "top1"]]
    m = t[~is_base(t)].merge(base, on=["traj_id", "position"], suffixes=("", "_base"))
    return m.assign(delta_logprob=m["logprob"] - m["logprob_base"], top1_changed=m["top1"] != m["top1_base"])


def _context_table(agg: pd.DataFrame, changed: pd.Series, min_count: int) -> pd.DataFrame:
    agg = agg.merge(changed, on=["checkpoint", "context"], how="left")
    agg = agg[(agg["n"] >= min_count) & (agg["context"] != "")]
    agg["direction"] = np.where(agg["mean_delta_logprob"] < 0, "detrimental", "beneficial")
    return agg.sort_values(["step", "mean_kl_base"], ascending=[True, False]).reset_index(drop=True)


# The drift tables computed part by part (a part: some trajectories' rows under every checkpoint), so that
# host memory holds one part's rows plus partial sums, never a whole table. Every drift table is a sum or a
# mean per trajectory x checkpoint (or of those): each part adds its sums and counts, the tables divide at
# the end. Equal to the whole-table computation (the tests' reference, tests/drift_reference.py) to float
# rounding (sums added in another order).

FOLD = 64  # partial frames kept before they are summed into one (bounds their memory by the distinct keys)


class _Sums:
    """Partial sums per key: frames of (keys..., sum columns...) added part by part, summed at the end."""

    def __init__(self, keys: list[str]):
        self.keys, self.frames = keys, []

    def add(self, frame: pd.DataFrame) -> None:
        if len(frame):
            self.frames.append(frame)
        if len(self.frames) > FOLD:
            self.frames = [self.total()]

    def total(self) -> pd.DataFrame | None:
        """One row per key (sorted by key, as a whole-table groupby gives them), or None when nothing was added."""
        if not self.frames:
            return None
        return pd.concat(self.frames, ignore_index=True).groupby(self.keys, sort=True).sum().reset_index()


class DriftParts:
    """The drift tables from the scoring and probe tables given part by part: ``add_tokens`` for each part of
    the token table, ``add_beliefs`` for each part of the beliefs (returns that part's effect rows, to be
    written out), then ``tables``. Host memory: one part plus the partial sums (per checkpoint and token,
    context or concept) and one final-belief row per trajectory and checkpoint.

        acc = DriftParts(graph, tau)
        for part in token_parts: acc.add_tokens(part)
        for part in belief_parts: effects = acc.add_beliefs(part, encoded_of_part)
        tables = acc.tables(branches)     # summary, by_token, by_concept, by_context, changes, final, counts

    The tables: ``summary`` per checkpoint: probed accuracy, mean gold belief at the end, mean KL (CoT tokens),
    detrimental / beneficial share; ``by_token``: tokens ranked by total effect drift per checkpoint (most
    detrimental first); ``by_concept``: concepts (findings of the graph) ranked by the effect drift of reading
    their mentions; ``by_context``: where the next-token distribution moved most, grouped by the ``n_context``
    tokens read just before (mean KL to base, mean change of the actual token's log-prob vs base: < 0, the
    trajectory's own reasoning became less likely; the share of positions whose top-1 changed and the most
    common new top-1); ``changes``: ``step_changes`` over the final beliefs.
    """

    def __init__(self, graph: nx.DiGraph | None = None, tau: float = TAU, n_context: int = 2, min_count: int = 5):
        self.tau, self.graph, self.n_context, self.min_count = tau, graph, n_context, min_count
        self.surfaces = concept_surfaces(graph) if graph is not None else None
        self._kl = _Sums(["checkpoint", "step", "in_think"])
        self._ctx = _Sums(["checkpoint", "step", "context"])
        self._top1: list[pd.DataFrame] = []
        self._det = _Sums(["checkpoint"])
        self._by_traj: list[pd.DataFrame] = []
        self._tok = _Sums(["checkpoint", "step", "key", "region"])
        self._tok_traj: list[pd.DataFrame] = []
        self._concept = _Sums(["checkpoint", "step", "concept"])
        self._fin: list[pd.DataFrame] = []
        self.spans = self.effects = False  # whether any concept mention / any effect row was seen

    # -- the token table: mean KLs per checkpoint, drift by context
    def add_tokens(self, tokens: pd.DataFrame) -> None:
        cols = list(SUMMARY_KL)
        self._kl.add(tokens[["checkpoint", "step", "in_think"]].assign(
            **{c: tokens[c].astype(np.float64) for c in cols}, count=1)
            .groupby(["checkpoint", "step", "in_think"], sort=False).sum().reset_index())
        m = _context_rows(tokens, self.n_context)
        self._ctx.add(m[["checkpoint", "step", "context"]].assign(
            n=1, kl=m["kl_base"].astype(np.float64), dl=m["delta_logprob"].astype(np.float64),
            ch=m["top1_changed"].astype(np.int64)).groupby(["checkpoint", "step", "context"], sort=False).sum()
            .reset_index())
        # the most common new top-1 per (checkpoint, context); ties go to the first seen in (trajectory,
        # position) order, as value_counts (stable) does over the whole table
        changed = m[m["top1_changed"]].groupby(["checkpoint", "context", "top1"], sort=False).agg(
            count=("top1", "size"), first_traj=("traj_id", "first"), first_pos=("position", "first")).reset_index()
        self._top1.append(changed)
        if len(self._top1) > FOLD:
            self._top1 = [_fold_top1(self._top1)]

    # -- the beliefs: effects, drivers by token and concept, final beliefs
    def add_beliefs(self, beliefs: pd.DataFrame, encoded: list[Encoded]) -> pd.DataFrame:
        """A part of the beliefs table (every checkpoint of its trajectories) and those trajectories' encodings;
        returns the part's rows of the effects table (``token_effects``)."""
        effects = token_effects(beliefs, encoded, self.tau)
        self._fin.append(final_beliefs(beliefs))
        if effects.empty:
            return effects
        self.effects = True
        d = effects.assign(det=(effects["direction"] == "detrimental").astype(np.int64),
                           ben=(effects["direction"] == "beneficial").astype(np.int64))
        self._det.add(d[["checkpoint", "det", "ben"]].assign(n=1).groupby("checkpoint", sort=False).sum().reset_index())
        self._by_traj.append(d.groupby("traj_id", sort=False)[["det", "ben"]].sum())
        self._add_tokens_of(d)
        if self.surfaces is not None:
            self._add_concepts(effects, encoded)
        return effects

    def _add_tokens_of(self, d: pd.DataFrame) -> None:
        self._eff_dtype = d["effect_drift"].dtype
        df = d[~is_base(d)].assign(key=d["token"].astype(str).str.strip())
        df = df[df["key"] != ""]
        keys = ["checkpoint", "step", "key", "region"]
        self._tok.add(df[keys].assign(n=1, total=df["effect_drift"].astype(np.float64), det=df["det"], ben=df["ben"])
                      .groupby(keys, sort=False).sum().reset_index())
        self._tok_traj.append(_first_trajectories(df[[*keys, "traj_id"]], keys))
        if len(self._tok_traj) > FOLD:
            self._tok_traj = [_first_trajectories(pd.concat(self._tok_traj, ignore_index=True), keys)]

    def _add_concepts(self, effects: pd.DataFrame, encoded: list[Encoded]) -> None:
        spans = [(e.id, c, a, b) for e in encoded for c, a, b in concept_spans(e, self.surfaces)]
        if not spans:
            return
        self.spans = True
        per = span_sums(effects, pd.DataFrame(spans, columns=["traj_id", "concept", "first", "end"]))
        per = per[~is_base(per)]
        keys = ["checkpoint", "step", "concept"]
        self._concept.add(per[keys].assign(
            n=1, total=per["effect_drift"].astype(np.float64), det=(per["effect_drift"] < -self.tau).astype(np.int64),
            ben=(per["effect_drift"] > self.tau).astype(np.int64)).groupby(keys, sort=False).sum().reset_index())

    # -- the tables
    def final(self) -> pd.DataFrame:
        """The final beliefs (``final_beliefs``) of every trajectory and checkpoint added."""
        return final_beliefs(pd.concat(self._fin, ignore_index=True)) if self._fin else pd.DataFrame()

    def counts(self) -> pd.DataFrame:
        """Detrimental / beneficial effect rows per trajectory: (traj_id index) det, ben."""
        if not self._by_traj:
            return pd.DataFrame({"det": pd.Series(dtype=np.int64), "ben": pd.Series(dtype=np.int64)})
        return pd.concat(self._by_traj).groupby(level=0).sum()

    def tables(self, branches: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
        """summary, by_token, by_concept, by_context, changes (as the whole-table functions give them)."""
        fin = self.final()
        return {"summary": _summary(self._kls(), fin, self._det_shares()), "by_token": self._by_token(),
                "by_concept": self._by_concept(), "by_context": self._by_context(),
                "changes": step_changes(fin, branches=branches)}

    def _kls(self) -> pd.DataFrame:
        cols = list(SUMMARY_KL)
        t = self._kl.total()
        if t is None:
            return pd.DataFrame(columns=["checkpoint", "step", *cols])
        if t["in_think"].any():
            t = t[t["in_think"]]
        t = t.groupby(["checkpoint", "step"], sort=True)[[*cols, "count"]].sum().reset_index()
        return t[["checkpoint", "step"]].assign(**{c: t[c] / t["count"] for c in cols})

    def _det_shares(self) -> pd.DataFrame:
        t = self._det.total()
        if t is None:
            return pd.DataFrame()
        return pd.DataFrame({"checkpoint": t["checkpoint"], "share_detrimental": t["det"] / t["n"],
                             "share_beneficial": t["ben"] / t["n"]})

    def _by_context(self) -> pd.DataFrame:
        t = self._ctx.total()
        if t is None:  # no token rows: the table's columns, empty
            t = pd.DataFrame({"checkpoint": pd.Series(dtype=object), "step": pd.Series(dtype=object),
                              "context": pd.Series(dtype=object), "n": pd.Series(dtype=np.int64),
                              **{c: pd.Series(dtype=np.float64) for c in ("kl", "dl", "ch")}})
        agg = t[["checkpoint", "step", "context", "n"]].assign(
            mean_kl_base=t["kl"] / t["n"], mean_delta_logprob=t["dl"] / t["n"], share_top1_changed=t["ch"] / t["n"])
        top = _fold_top1(self._top1) if self._top1 else pd.DataFrame(
            columns=["checkpoint", "context", "top1", "count", "first_traj", "first_pos"])
        top = top.sort_values(["count", "first_traj", "first_pos"], ascending=[False, True, True], kind="stable")
        changed = top.drop_duplicates(["checkpoint", "context"]).set_index(["checkpoint", "context"])["top1"]
        return _context_table(agg, changed.rename("new_top1"), self.min_count)

    def _by_token(self) -> pd.DataFrame:
        t = self._tok.total()
        if not self.effects or t is None:  # a single probe position per trajectory reads no tokens
            return pd.DataFrame(columns=["checkpoint", "step", "token", "region", "n", "mean_effect_drift", "direction"])
        keys = ["checkpoint", "step", "key", "region"]
        trajs = _first_trajectories(pd.concat(self._tok_traj, ignore_index=True), keys)
        lists = trajs.groupby(keys, sort=True)["traj_id"].agg(list).rename("trajectories").reset_index()
        agg = t[keys].assign(n=t["n"], mean_effect_drift=t["total"] / t["n"],
                             total_effect_drift=t["total"].astype(self._eff_dtype),  # a sum keeps the type
                             share_detrimental=t["det"] / t["n"], share_beneficial=t["ben"] / t["n"])
        agg = agg.merge(lists, on=keys, how="left")
        agg = agg[agg["n"] >= self.min_count].rename(columns={"key": "token"})
        agg["direction"] = np.where(agg["mean_effect_drift"] < 0, "detrimental", "beneficial")
        return agg.sort_values(["step", "total_effect_drift"]).reset_index(drop=True)

    def _by_concept(self) -> pd.DataFrame:
        if self.surfaces is None:
            return pd.DataFrame()
        t = self._concept.total()
        if not self.spans or not self.effects:
            return pd.DataFrame(columns=["checkpoint", "step", "concept", "n", "mean_effect_drift"])
        if t is None:
            t = pd.DataFrame(columns=["checkpoint", "step", "concept", "n", "total", "det", "ben"])
        agg = t[["checkpoint", "step", "concept", "n"]].assign(
            mean_effect_drift=t["total"] / t["n"], share_detrimental=t["det"] / t["n"],
            share_beneficial=t["ben"] / t["n"])
        agg["direction"] = np.where(agg["mean_effect_drift"] < 0, "detrimental", "beneficial")
        return agg.sort_values(["step", "mean_effect_drift"]).reset_index(drop=True)


TRAJECTORIES_LISTED = 50  # a by-token row lists at most this many of its trajectories (the first by id)


def _first_trajectories(df: pd.DataFrame, keys: list[str], limit: int = TRAJECTORIES_LISTED) -> pd.DataFrame:
    """Per key, its first ``limit`` distinct trajectories in sorted order (the by-token table's list)."""
    df = df.drop_duplicates([*keys, "traj_id"]).sort_values("traj_id", kind="stable")
    return df.groupby(keys, sort=False).head(limit)


def _fold_top1(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Partial new-top-1 counts summed; each keeps the first (trajectory, position) it was seen at."""
    df = pd.concat(frames, ignore_index=True).sort_values(["first_traj", "first_pos"], kind="stable")
    return df.groupby(["checkpoint", "context", "top1"], sort=False).agg(
        count=("count", "sum"), first_traj=("first_traj", "first"), first_pos=("first_pos", "first")).reset_index()
