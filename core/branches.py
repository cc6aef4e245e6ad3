"""CPO runs as branches of a checkpoint series, and the direct "start vs repaired" comparison.

A CPO run trains from one checkpoint (its start) and is not a later point of the RFT stream: its adapter
joins a series with a step after its start (``core.runs.join_series``), but views draw it as a branch of
its start and compare the two directly:

    found = run_branches(analysis.config.checkpoints)      # {"cpo-0412": Branch(start="checkpoint-160", ...)}
    cmp = compare(analysis.tokens, analysis.beliefs, "checkpoint-160", "cpo-0412")
    cmp.summary   # one row per model: probe accuracy, final gold belief, mean KL to base
    cmp.flips     # one row per trajectory whose final probed answer changed: fixed / broken / changed
    cmp.tokens    # CoT tokens whose log-probability moved most between start and repaired (mean per token)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# as core.series.GENERIC_NAMES / adapter_name (not imported: that module loads torch): the run folder names it
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
    name = path.parent.name if path.name in GENERIC else path.name
    start = Path(config["init_adapter"]).name if config.get("init_adapter") else "base"
    return Branch(re.sub(r"[^A-Za-z0-9_-]", "_", name), start, int(state["run_steps"]))


def run_branches(checkpoints: str | list[str] | None) -> dict[str, Branch]:
    """The CPO-run branches among an analysis's checkpoint folders, by series name."""
    paths = checkpoints if isinstance(checkpoints, list) else []
    return {b.name: b for b in (branch_of(p) for p in paths) if b is not None}


@dataclass
class Comparison:
    summary: pd.DataFrame
    flips: pd.DataFrame
    tokens: pd.DataFrame


def _final(beliefs: pd.DataFrame, name: str) -> pd.DataFrame:
    rows = beliefs[beliefs["checkpoint"] == name]
    return rows.loc[rows.groupby("traj_id")["position"].idxmax(), ["traj_id", "answer", "gold", "gold_prob"]]


def compare(tokens: pd.DataFrame, beliefs: pd.DataFrame, start: str, repaired: str, top: int = 20) -> Comparison:
    """``repaired`` against ``start`` on the same trajectories (see module docstring)."""
    a, b = _final(beliefs, start), _final(beliefs, repaired)
    both = a.merge(b, on=["traj_id", "gold"], suffixes=("_start", "_repaired"))
    ok_a, ok_b = both["answer_start"] == both["gold"], both["answer_repaired"] == both["gold"]
    both["flip"] = ["fixed" if y and not x else "broken" if x and not y else "changed" if s != r else ""
                    for x, y, s, r in zip(ok_a, ok_b, both["answer_start"], both["answer_repaired"], strict=True)]
    both["belief_change"] = both["gold_prob_repaired"] - both["gold_prob_start"]
    cot = tokens[tokens["in_think"]] if "in_think" in tokens and tokens["in_think"].any() else tokens
    kl = cot.groupby("checkpoint")["kl_base"].mean()
    summary = pd.DataFrame([{"model": f"{role}: {name}", "probe_accuracy": ok.mean() if len(ok) else float("nan"),
                             "final_gold_belief": fin.mean() if len(fin) else float("nan"),
                             "kl_to_base": kl.get(name, float("nan"))}
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
