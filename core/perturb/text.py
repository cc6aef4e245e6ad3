"""Perturbation tests: replace a span (e.g. "opacity" -> "lung opacity"), re-probe, report answer flips.

    pairs = perturbation_test(series, records, "consolidation", "airspace opacity", labels=diseases)
    perturbation_summary(pairs)        # per checkpoint: accuracy before / after, flip rate
    category_flips(pairs)              # the same per gold label (the authors' per-class figure)

Two modes. ``generate`` (default): the model writes its own CoT from the (perturbed) prompt by greedy
decoding and its answer is read after ``</think>``; this is what the model would do, and the flip rate
the paper's authors report. ``probe``: the trajectory's CoT is kept (teacher-forced) with the span
replaced everywhere, and the answer is the probed belief's argmax at the end of the CoT.

Both modes go through the series' family (``core.models.families``): on a vision-language series a record
keeps its ``images`` through the swap and both modes read them (the probe encodes each record with its images,
greedy decoding sees them): a synonym swap on an X-ray study is asked about the same X-ray.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from core.drift.probe import ProbeConfig, probe
from core.io import answers
from core.models.series import ModelSeries
from core.progress import Cancelled

FIELDS = ("prompt", "completion")


def replace_span(record: dict, find: str, replace: str) -> dict | None:
    """``record`` with every whole-word ``find`` replaced in prompt and completion (and in a conversation's
    turns, ``chat``, which the chat template renders); None if absent."""
    pattern = re.compile(rf"(?<![\w]){re.escape(find)}(?![\w])")
    if not any(pattern.search(record[f]) for f in FIELDS):
        return None
    new = {**record, **{f: pattern.sub(replace, record[f]) for f in FIELDS}}
    if record.get("chat"):
        new["chat"] = [{**t, "content": pattern.sub(replace, t["content"])} for t in record["chat"]]
    new["perturbation"] = {"find": find, "replace": replace}
    return new


def find_answer(text: str, labels: list[str]) -> str | None:
    """The label named last after ``</think>`` (or anywhere, without a think tag); None if none is."""
    return answers.find_answer(text, labels)


def perturbation_test(series: ModelSeries, records: list[dict], find: str, replace: str, labels: list[str],
                      mode: str = "generate", template: str | None = None, progress=None,
                      should_cancel=None, chat_template: bool = True) -> pd.DataFrame:
    """One row per affected trajectory x checkpoint: the answer (and in probe mode the gold belief) before
    and after the swap, and whether it flipped. Conversations go through the tokenizer's chat template, as
    in scoring, unless ``chat_template`` is off (the analysis setting)."""
    if mode not in ("generate", "probe"):
        raise ValueError(f"mode: expected 'generate' or 'probe', got {mode!r}")
    pairs = [(r, p) for r in records if (p := replace_span(r, find, replace)) is not None]
    if not pairs:
        return pd.DataFrame(columns=["traj_id", "checkpoint", "step", "gold", "answer_before", "answer_after",
                                     "gold_before", "gold_after", "malformed", "flip", "belief_change"])
    if mode == "generate":
        return _generate_test(series, pairs, labels, progress, should_cancel, chat_template)
    cfg = ProbeConfig(labels=labels, positions="end", **({"template": template} if template else {}))
    both = [r for r, _ in pairs] + [{**p, "id": f"{p['id']}#perturbed"} for _, p in pairs]
    beliefs = probe(series, series.encode(both, chat_template), cfg, progress, should_cancel)
    before = beliefs[~beliefs["traj_id"].str.endswith("#perturbed")]
    after = beliefs[beliefs["traj_id"].str.endswith("#perturbed")].assign(
        traj_id=lambda d: d["traj_id"].str.removesuffix("#perturbed"))
    cols = ["traj_id", "checkpoint", "step", "gold", "answer", "gold_prob"]
    df = before[cols].merge(after[["traj_id", "checkpoint", "answer", "gold_prob"]], on=["traj_id", "checkpoint"],
                            suffixes=("_before", "_after"))
    df = df.rename(columns={"gold_prob_before": "gold_before", "gold_prob_after": "gold_after"})
    df = mark_flips(df)
    df["belief_change"] = df["gold_after"] - df["gold_before"]
    return df.sort_values(["step", "traj_id"]).reset_index(drop=True)


def _generate_test(series: ModelSeries, pairs: list[tuple[dict, dict]], labels: list[str], progress,
                   should_cancel, chat_template: bool = True) -> pd.DataFrame:
    rows = []
    recs = [r for r, _ in pairs] + [p for _, p in pairs]  # before, then after the swap
    batch = min(64, series.family.max_generation_batch or 64)
    for n, name in enumerate(series.names):
        if should_cancel and should_cancel():
            raise Cancelled("perturbation test cancelled")
        with series.activate(name) as model:  # each record decoded as the family reads it (VL: with its images)
            texts = series.family.greedy(model, series.processor, recs, 96, batch, chat_template)
        answers = [find_answer(t, labels) for t in texts]
        before, after = answers[: len(pairs)], answers[len(pairs):]
        rows += [{"traj_id": r["id"], "checkpoint": name, "step": series.steps[name], "gold": r.get("label"),
                  "answer_before": b, "answer_after": a} for (r, _), b, a in zip(pairs, before, after, strict=True)]
        if progress:
            progress(n + 1, len(series.names), f"generated under {name}")
    df = pd.DataFrame(rows)
    df["gold_before"] = df["gold_after"] = df["belief_change"] = float("nan")
    return mark_flips(df)


def mark_flips(df: pd.DataFrame) -> pd.DataFrame:
    """``malformed``: no answer could be read before or after the swap (None; a table of an older version gets
    it from its answers); ``flip``: both answers read and they differ. A malformed pair is its own category,
    never a flip (``None != None`` is true in pandas)."""
    df = df.copy()
    df["malformed"] = df["answer_before"].isna() | df["answer_after"].isna()
    df["flip"] = (df["answer_before"] != df["answer_after"]) & ~df["malformed"]
    return df


def _rates(g) -> pd.DataFrame:
    """n, accuracy before and after, the flip rate over the pairs whose answers were both read (NaN when none
    was), and the malformed share: per group of ``g`` (a grouped table of ``mark_flips``)."""
    out = g.agg(n=("flip", "size"), accuracy_before=("correct_before", "mean"),
                accuracy_after=("correct_after", "mean"), flips=("flip", "sum"), read=("read", "sum"),
                malformed=("malformed", "mean"))
    out["flip_rate"] = (out["flips"] / out["read"].where(out["read"] > 0)).astype(float)
    return out.drop(columns=["flips", "read"])


def _scored(df: pd.DataFrame) -> pd.DataFrame:
    df = mark_flips(df) if "malformed" not in df else df
    return df.assign(correct_before=df["answer_before"] == df["gold"], correct_after=df["answer_after"] == df["gold"],
                     read=~df["malformed"])


def perturbation_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint: n, accuracy before and after, flip rate (over the pairs with both answers read),
    malformed share, mean gold-belief change."""
    g = _scored(df).groupby(["checkpoint", "step"])
    out = _rates(g).join(g["belief_change"].mean().rename("mean_belief_change"))
    return out.reset_index().sort_values("step")[["checkpoint", "step", "n", "accuracy_before", "accuracy_after",
                                                  "flip_rate", "malformed", "mean_belief_change"]]


def category_flips(df: pd.DataFrame) -> pd.DataFrame:
    """Per gold label and checkpoint: accuracy before / after, flip rate (answers read on both sides) and
    malformed share."""
    out = _rates(_scored(df).groupby(["gold", "checkpoint", "step"])).reset_index().sort_values(["gold", "step"])
    return out[["gold", "checkpoint", "step", "n", "accuracy_before", "accuracy_after", "flip_rate", "malformed"]]


def swaps_in(record: dict, graph) -> list[tuple[str, str, list[str]]]:
    """The finding surfaces that occur in ``record`` (prompt or completion), each with its concept and
    the other surfaces it could be swapped for: [(concept, surface, alternatives), ...], longest first."""
    from core.graph.concepts import synonym_sets

    text = " ".join(record.get(f, "") for f in FIELDS)
    found = []
    for concept, surfaces in synonym_sets(graph).items():
        for s in surfaces:
            if re.search(rf"(?<![\w]){re.escape(s)}(?![\w])", text):
                found.append((concept, s, [o for o in surfaces if o != s]))
    return sorted(found, key=lambda f: -len(f[1]))


PREFERRED_SWAP = ("consolidation", "airspace opacity")  # offered first when a graph holds it (the demo's shortcut)


def swap_pairs(graph) -> list[tuple[str, str, str]]:
    """Every near-synonym swap the graph offers: (concept, surface, replacement) for each ordered pair of
    distinct names of a finding; ``PREFERRED_SWAP`` first when present."""
    from core.graph.concepts import synonym_sets

    pairs = [(c, s, o) for c, names in synonym_sets(graph).items() for s in names for o in names if o != s]
    return sorted(pairs, key=lambda p: p[1:] != PREFERRED_SWAP)  # stable: otherwise the graph's order


def batch_output(out_dir: Path, data: str | Path, find: str, replace: str, mode: str, limit: int) -> Path:
    """Where a dataset-wide test writes its table: one parquet per (data, swap, mode, limit), so the same
    test run again replaces its own result and a different one never does."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(data).stem}-{find}-{replace}-{mode}-{limit}")
    return Path(out_dir) / f"{slug}.parquet"
