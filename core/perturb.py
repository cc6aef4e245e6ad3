"""Perturbation tests: replace a span (e.g. "opacity" -> "lung opacity"), re-probe, report answer flips.

    pairs = perturbation_test(series, records, "consolidation", "airspace opacity", labels=diseases)
    perturbation_summary(pairs)        # per checkpoint: accuracy before / after, flip rate
    category_flips(pairs)              # the same per gold label (the authors' per-class figure)

The answer is the probed belief's argmax at the end of the (teacher-forced) CoT, so the only change
between "before" and "after" is the replaced span.
"""

from __future__ import annotations

import re

import pandas as pd

from core.probe import ProbeConfig, probe
from core.series import ModelSeries
from core.trajectories import encode

FIELDS = ("prompt", "completion")


def replace_span(record: dict, find: str, replace: str) -> dict | None:
    """``record`` with every whole-word ``find`` replaced in prompt and completion; None if absent."""
    pattern = re.compile(rf"(?<![\w]){re.escape(find)}(?![\w])")
    if not any(pattern.search(record[f]) for f in FIELDS):
        return None
    new = {**record, **{f: pattern.sub(replace, record[f]) for f in FIELDS}}
    new["perturbation"] = {"find": find, "replace": replace}
    return new


def perturbation_test(series: ModelSeries, records: list[dict], find: str, replace: str, labels: list[str],
                      template: str | None = None, progress=None, should_cancel=None) -> pd.DataFrame:
    """One row per affected trajectory x checkpoint: answer and gold belief before and after the swap."""
    pairs = [(r, p) for r in records if (p := replace_span(r, find, replace)) is not None]
    if not pairs:
        return pd.DataFrame(columns=["traj_id", "checkpoint", "step", "gold", "answer_before", "answer_after",
                                     "gold_before", "gold_after", "flip"])
    cfg = ProbeConfig(labels=labels, positions="end", **({"template": template} if template else {}))
    both = [r for r, _ in pairs] + [{**p, "id": f"{p['id']}#perturbed"} for _, p in pairs]
    beliefs = probe(series, encode(series.tokenizer, both), cfg, progress, should_cancel)
    before = beliefs[~beliefs["traj_id"].str.endswith("#perturbed")]
    after = beliefs[beliefs["traj_id"].str.endswith("#perturbed")].assign(
        traj_id=lambda d: d["traj_id"].str.removesuffix("#perturbed"))
    cols = ["traj_id", "checkpoint", "step", "gold", "answer", "gold_prob"]
    df = before[cols].merge(after[["traj_id", "checkpoint", "answer", "gold_prob"]], on=["traj_id", "checkpoint"],
                            suffixes=("_before", "_after"))
    df = df.rename(columns={"gold_prob_before": "gold_before", "gold_prob_after": "gold_after"})
    df["flip"] = df["answer_before"] != df["answer_after"]
    df["belief_change"] = df["gold_after"] - df["gold_before"]
    return df.sort_values(["step", "traj_id"]).reset_index(drop=True)


def perturbation_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint: n, accuracy before and after, flip rate, mean gold-belief change."""
    g = df.assign(correct_before=df["answer_before"] == df["gold"], correct_after=df["answer_after"] == df["gold"])
    return g.groupby(["checkpoint", "step"]).agg(
        n=("flip", "size"), accuracy_before=("correct_before", "mean"), accuracy_after=("correct_after", "mean"),
        flip_rate=("flip", "mean"), mean_belief_change=("belief_change", "mean")).reset_index().sort_values("step")


def category_flips(df: pd.DataFrame) -> pd.DataFrame:
    """Per gold label and checkpoint: accuracy before / after and flip rate."""
    g = df.assign(correct_before=df["answer_before"] == df["gold"], correct_after=df["answer_after"] == df["gold"])
    return g.groupby(["gold", "checkpoint", "step"]).agg(
        n=("flip", "size"), accuracy_before=("correct_before", "mean"), accuracy_after=("correct_after", "mean"),
        flip_rate=("flip", "mean")).reset_index().sort_values(["gold", "step"])
