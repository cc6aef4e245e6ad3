"""CPO runs as branches of a checkpoint series, and the direct "start vs repaired" comparison.

A CPO run trains from one checkpoint (its start) and is not a later point of the RFT stream: its adapter
joins a series with a step after its start (``core.cpo.runs.join_series``), but views draw it as a branch of
its start and compare the two directly:

    found = run_branches(analysis.config.checkpoints)      # {"cpo-0412": Branch(start="checkpoint-160", ...)}
    cmp = compare(analysis.tokens, analysis.beliefs, "checkpoint-160", "cpo-0412")
    cmp.summary   # one row per model: probe accuracy, final gold belief, mean KL to base and to the start
    cmp.flips     # one row per trajectory whose final probed answer changed: fixed / broken / changed
    cmp.tokens    # CoT tokens whose log-probability moved most between start and repaired (mean per token)

What "previous" means in a series with branches (``series_parents``): a branch is measured against its start
(its ``kl_prev`` / ``js_prev`` are KL / JS to the start checkpoint, its step test compares it with the start),
every other checkpoint against the previous checkpoint that is not a branch, so checkpoint-240 is never
compared with a run branched from checkpoint-160.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# as core.models.series.GENERIC_NAMES / adapter_name (not imported: that module loads torch): the run folder names it
GENERIC = {"adapter", "final", "final_adapter", "output", "model"}


@dataclass(frozen=True)
class Branch:
    name: str  # the adapter's name in the series (the run folder's name for ``<run>/adapter``)
    start: str  # the checkpoint it started from ("base" when it started from the SFT base)
    run_steps: int  # the steps the run trained


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def branch_of(path: str | Path) -> Branch | None:
    """The branch a checkpoint folder is, if a CPO run wrote it (``trainer_state.json`` with ``run_steps``
    beside a run ``config.json`` naming ``init_adapter``); else None."""
    path = Path(path)
    state = _read(path / "trainer_state.json") or {}
    config = _read(path.parent / "config.json") or {}
    if "run_steps" not in state or "init_adapter" not in config:
        return None
    start = _series_name(Path(config["init_adapter"])) if config.get("init_adapter") else "base"
    return Branch(_series_name(path), start, int(state["run_steps"]))


def _series_name(path: Path) -> str:
    """A checkpoint folder's name in a series (as core.models.series.adapter_name): the run folder's for a generic
    ``<run>/adapter``, so a run started from another run's adapter names that run as its start."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", path.parent.name if path.name in GENERIC else path.name)


def run_branches(checkpoints: str | list[str] | None) -> dict[str, Branch]:
    """The CPO-run branches among an analysis's checkpoint folders, by series name."""
    paths = checkpoints if isinstance(checkpoints, list) else []
    return {b.name: b for b in (branch_of(p) for p in paths) if b is not None}


def series_parents(names: list[str], starts: dict[str, str]) -> dict[str, str]:
    """What each checkpoint after the first (the base) is measured against: a branch (``starts``: branch name
    -> its start) against its start, any other checkpoint against the previous checkpoint that is not a branch.
    A branch whose start does not come before it in ``names`` is measured against the base (``names[0]``),
    since scoring keeps only what it has already computed."""
    if not names:  # nothing scored or probed (an analysis without the probe has no beliefs)
        return {}
    out, last, seen = {}, names[0], {names[0]}
    for name in names[1:]:
        if name in starts:
            out[name] = starts[name] if starts[name] in seen else names[0]
        else:
            out[name], last = last, name
        seen.add(name)
    return out


@dataclass
class Comparison:
    summary: pd.DataFrame
    flips: pd.DataFrame
    tokens: pd.DataFrame


def _final(beliefs: pd.DataFrame, name: str) -> pd.DataFrame:
    rows = beliefs[beliefs["checkpoint"] == name]
    return rows.loc[rows.groupby("traj_id")["position"].idxmax(), ["traj_id", "answer", "gold", "gold_prob"]]


TOKEN_COLUMNS = ["traj_id", "checkpoint", "position", "token", "logprob", "in_think", "kl_base", "kl_prev"]
BELIEF_COLUMNS = ["traj_id", "checkpoint", "position", "answer", "gold", "gold_prob"]


def measured_from_start(changes: pd.DataFrame) -> bool:
    """Whether an analysis scored its runs against their start (its step tests say ``branch``): then a run's
    ``kl_prev`` is KL(repaired || start); older analyses measured it against the previous step of the series."""
    return "branch" in changes.columns and bool(changes["branch"].any())


def compare(tokens: pd.DataFrame, beliefs: pd.DataFrame, start: str, repaired: str, top: int = 20,
            from_start: bool = False) -> Comparison:
    """``repaired`` against ``start`` on the same trajectories (see module docstring). ``from_start``: the
    run's ``kl_prev`` is its KL to the start (``measured_from_start``), shown as ``kl_to_start``."""
    a, b = _final(beliefs, start), _final(beliefs, repaired)
    both = a.merge(b, on=["traj_id", "gold"], suffixes=("_start", "_repaired"))
    ok_a, ok_b = both["answer_start"] == both["gold"], both["answer_repaired"] == both["gold"]
    # a trajectory whose own answer could not be read (or is no probed label): in no accuracy (``probed``)
    read = both["gold"].notna() & both["gold_prob_start"].notna()
    both["flip"] = ["fixed" if y and not x else "broken" if x and not y else "changed" if s != r else ""
                    for x, y, s, r in zip(ok_a, ok_b, both["answer_start"], both["answer_repaired"], strict=True)]
    both["belief_change"] = both["gold_prob_repaired"] - both["gold_prob_start"]
    cot = tokens[tokens["in_think"]] if "in_think" in tokens and tokens["in_think"].any() else tokens
    kl = cot.groupby("checkpoint")["kl_base"].mean()
    to_start = cot[cot["checkpoint"] == repaired]["kl_prev"].mean() if from_start and "kl_prev" in cot else float("nan")
    summary = pd.DataFrame([{"model": f"{role}: {name}", "probe_accuracy": ok[read].mean() if read.any() else float("nan"),
                             "probed": int(read.sum()),
                             "final_gold_belief": fin.mean() if len(fin) else float("nan"),
                             "kl_to_base": kl.get(name, float("nan")),
                             "kl_to_start": 0.0 if role == "start" else to_start}
                            for role, name, ok, fin in (("start", start, ok_a, both["gold_prob_start"]),
                                                        ("repaired", repaired, ok_b, both["gold_prob_repaired"]))])
    flips = both[both["flip"] != ""].sort_values(["flip", "belief_change"], ascending=[False, True])
    keys = ["traj_id", "position"]
    pair = cot[cot["checkpoint"] == start][keys + ["token", "logprob"]].merge(
        cot[cot["checkpoint"] == repaired][keys + ["logprob"]], on=keys, suffixes=("_start", "_repaired"))
    pair["logprob_change"] = pair["logprob_repaired"] - pair["logprob_start"]
    by_token = (pair.groupby("token")["logprob_change"].agg(["mean", "size"])
                .rename(columns={"mean": "mean_logprob_change", "size": "count"}).reset_index())
    by_token = by_token.reindex(by_token["mean_logprob_change"].abs().sort_values(ascending=False).index).head(top)
    return Comparison(summary, flips.reset_index(drop=True), by_token.reset_index(drop=True))


@dataclass
class TrajectoryPair:
    beliefs: pd.DataFrame  # per probe position: gold_prob_start, gold_prob_repaired, answer_start, answer_repaired
    tokens: pd.DataFrame  # per completion token: token, logprob_change (repaired - start), kl_to_start


def trajectory_pair(tokens: pd.DataFrame, beliefs: pd.DataFrame, start: str, repaired: str,
                    from_start: bool = False) -> TrajectoryPair:
    """One trajectory under ``start`` and ``repaired`` side by side (its rows of the tokens and beliefs
    tables): the belief in the gold answer along the trajectory under each, and per CoT token the change of
    its log-probability and, when the run was scored from its start (``from_start``), KL(repaired || start)."""
    b = beliefs[["checkpoint", "position", "gold_prob", "answer"]]
    pb = b[b["checkpoint"] == start].drop(columns="checkpoint").merge(
        b[b["checkpoint"] == repaired].drop(columns="checkpoint"), on="position", suffixes=("_start", "_repaired"))
    t = tokens[tokens["checkpoint"] == start][["position", "token", "logprob"]].merge(
        tokens[tokens["checkpoint"] == repaired][["position", "logprob", "kl_prev"]], on="position",
        suffixes=("_start", "_repaired"))
    t["logprob_change"] = t["logprob_repaired"] - t["logprob_start"]
    t["kl_to_start"] = t["kl_prev"] if from_start else float("nan")
    return TrajectoryPair(pb.sort_values("position").reset_index(drop=True),
                          t.drop(columns="kl_prev").sort_values("position").reset_index(drop=True))
