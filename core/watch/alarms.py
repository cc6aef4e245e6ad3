"""Alarms over the step axis of a watched run, each naming the step, the rule, the figure and its evidence.

Rules (thresholds: ``core.watch.config.WatchConfig``; defaults fire on the sample world's shortcut at step 160 and
stay quiet on a stationary run, both tested):

    belief_fall        mean final gold-answer belief fell by > belief_drop since the previous step, or the engine's
                       Page-Hinkley detector (core.drift.findings.page_hinkley, threshold page_hinkley) alarms here
    detrimental_rise   detrimental share of read positions rose by > detrimental_rise since the previous step
    concept_surge      one concept's mean effect drift (core.drift.findings: drivers_by_concept) fell by > concept_drop
                       since the previous step (the shortcut: "opacity" now pulls belief to Lung Opacity)
    entropy_collapse   mean CoT token entropy below entropy_ratio x the base's
    kl_jump            mean KL to the previous step above kl_jump x its median over the earlier steps, and > kl_min
    malformed          share of greedy answers that give no label above malformed_share

A rule raises an alarm at the step where it starts to hold (not again while it keeps holding); concept_surge again
when another concept starts to surge (one alarm per step: the strongest concept, the others listed). ``evaluate`` looks at the steps up to the one given only, so a restarted scorer raises the same alarms.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.drift import findings as drift

RULES = ("belief_fall", "detrimental_rise", "concept_surge", "entropy_collapse", "kl_jump", "malformed")


def evaluate(summary: pd.DataFrame, by_concept: pd.DataFrame, by_token: pd.DataFrame, by_context: pd.DataFrame,
             finals: pd.DataFrame, answers: dict[str, list[dict]], cfg, checkpoint: str) -> list[dict]:
    """The alarms that start at ``checkpoint``: ``summary`` (base first, then steps), the drift tables and final
    beliefs of the steps so far, ``answers`` (checkpoint -> greedy answers), ``cfg`` the watch's thresholds."""
    line = summary.sort_values("step", kind="stable").reset_index(drop=True)
    names = line["checkpoint"].tolist()
    if checkpoint not in names:
        return []
    i = names.index(checkpoint)
    found = []
    for rule in RULES:
        now = _holds(rule, line, i, by_concept, answers, cfg)
        before = _holds(rule, line, i - 1, by_concept, answers, cfg) if i > 1 else {}
        new = [subject for subject in now if subject not in before]  # still holding: raised already
        if not new:
            continue
        alarm = {"rule": rule, "checkpoint": checkpoint, "step": int(line.loc[i, "step"]), **now[new[0]]}
        if len(new) > 1:  # several concepts at once: one alarm, the strongest first
            alarm["others"] = new[1:]
            alarm["message"] += f" (and {len(new) - 1} more: {', '.join(new[1:4])}{', ...' if len(new) > 4 else ''})"
        alarm["evidence"] = _evidence(rule, alarm, line, i, finals, by_token, by_context, by_concept, answers)
        found.append(alarm)
    return found


def _holds(rule: str, line: pd.DataFrame, i: int, by_concept, answers, cfg) -> dict[str, dict]:
    """What holds for ``rule`` at row ``i`` of ``line``: subject ("" or a concept) -> its figure."""
    if i < 1:
        return {}
    return {"belief_fall": _belief, "detrimental_rise": _detrimental, "concept_surge": _concepts,
            "entropy_collapse": _entropy, "kl_jump": _kl, "malformed": _malformed}[rule](line, i, by_concept, answers, cfg)


def _value(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _belief(line, i, _concepts, _answers, cfg) -> dict:
    now, prev = _value(line.loc[i, "final_gold_prob"]), _value(line.loc[i - 1, "final_gold_prob"])
    if now is None or prev is None:
        return {}
    series = [v for v in line.loc[:i, "final_gold_prob"].tolist() if not np.isnan(v)]
    ph = drift.page_hinkley(series, threshold=cfg.page_hinkley)
    dropped, detected = prev - now > cfg.belief_drop, ph == len(series) - 1
    if not (dropped or detected):
        return {}
    message = f"gold-answer belief fell {prev:.2f} -> {now:.2f} ({now - prev:+.2f})" if dropped else \
        f"gold-answer belief in a sustained fall ({series[0]:.2f} at the base, {now:.2f} now)"
    return {"": {"figure": "final gold-answer belief", "value": round(now, 4), "previous": round(prev, 4),
                 "threshold": cfg.belief_drop, "page_hinkley": detected,
                 "message": message + (", Page-Hinkley alarm" if detected else "")}}


def _detrimental(line, i, _concepts, _answers, cfg) -> dict:
    if i < 2:
        return {}  # a first step's share is all the run's drift so far (the base's is 0 by definition)
    prev, now = _value(line.loc[i - 1, "share_detrimental"]), _value(line.loc[i, "share_detrimental"])
    if prev is None or now is None or now - prev <= cfg.detrimental_rise:
        return {}
    return {"": {"figure": "detrimental share", "value": round(now, 4), "previous": round(prev, 4),
                 "threshold": cfg.detrimental_rise,
                 "message": f"detrimental share rose {prev:.3f} -> {now:.3f} since the previous step"}}


def _concepts(line, i, by_concept, _answers, cfg) -> dict:
    if by_concept is None or by_concept.empty or i < 2:
        return {}  # a first step's drift is all the run's drift so far: no surge to tell from it
    name, prev_name = line.loc[i, "checkpoint"], line.loc[i - 1, "checkpoint"]
    c = by_concept[by_concept["n"] >= cfg.concept_min]
    now = c[c["checkpoint"] == name].set_index("concept")["mean_effect_drift"].astype(float)
    prev = c[c["checkpoint"] == prev_name].set_index("concept")["mean_effect_drift"].astype(float)
    delta = (now - prev.reindex(now.index).fillna(0.0)).dropna()
    out = {}
    for concept in delta[delta < -cfg.concept_drop].sort_values().index:
        out[concept] = {"figure": f"effect drift of '{concept}'", "concept": concept, "value": round(now[concept], 4),
                        "previous": round(float(prev.get(concept, 0.0)), 4), "threshold": cfg.concept_drop,
                        "message": f"reading '{concept}' now moves belief away from the gold answer: effect drift "
                                   f"{float(prev.get(concept, 0.0)):+.2f} -> {now[concept]:+.2f}"}
    return out


def _entropy(line, i, _concepts, _answers, cfg) -> dict:
    base, now = _value(line.loc[0, "entropy"]), _value(line.loc[i, "entropy"])
    if base is None or now is None or base <= 0:
        return {}
    if now < cfg.entropy_ratio * base:
        return {"": {"figure": "mean CoT token entropy", "value": round(now, 4), "previous": round(base, 4),
                     "threshold": cfg.entropy_ratio,
                     "message": f"CoT entropy collapsed to {now / base:.0%} of the base's ({base:.3f} -> {now:.3f} nats)"}}
    return {}


def _kl(line, i, _concepts, _answers, cfg) -> dict:
    kls = line.loc[1:i, "kl_prev"].astype(float).tolist()
    if len(kls) < 2 or np.isnan(kls[-1]):
        return {}
    median = float(np.nanmedian(kls[:-1]))
    now = kls[-1]
    if now > cfg.kl_min and now > cfg.kl_jump * median:
        return {"": {"figure": "mean KL to the previous step", "value": round(now, 4), "previous": round(median, 4),
                     "threshold": cfg.kl_jump,
                     "message": f"KL to the previous step jumped to {now:.2f} nats ({now / max(median, 1e-12):.1f}x "
                                f"its median so far, {median:.3f}); KL to the base {line.loc[i, 'kl_base']:.2f}"}}
    return {}


def _malformed(line, i, _concepts, answers, cfg) -> dict:
    got = answers.get(line.loc[i, "checkpoint"]) or []
    if not got:
        return {}
    bad = [a for a in got if a.get("answer") is None]
    share = len(bad) / len(got)
    if share > cfg.malformed_share:
        return {"": {"figure": "malformed answers", "value": round(share, 4), "threshold": cfg.malformed_share,
                     "message": f"{len(bad)} of {len(got)} greedy answers give no answer in the expected format"}}
    return {}


def _evidence(rule: str, alarm: dict, line, i, finals, by_token, by_context, by_concept, answers) -> dict:
    """The tokens, contexts and trajectories that drove the alarm (what the explorer opens at that step)."""
    name, prev = line.loc[i, "checkpoint"], line.loc[i - 1, "checkpoint"]
    out: dict = {"trajectories": _fallen(finals, name, prev)}
    step = by_token[by_token["checkpoint"] == name] if by_token is not None and len(by_token) else pd.DataFrame()
    if len(step):
        top = step.nsmallest(5, "total_effect_drift")
        out["tokens"] = [{"token": t, "region": r, "n": int(n), "mean_effect_drift": round(float(m), 4)}
                         for t, r, n, m in zip(top["token"], top["region"], top["n"], top["mean_effect_drift"], strict=True)]
    ctx = by_context[by_context["checkpoint"] == name] if by_context is not None and len(by_context) else pd.DataFrame()
    if len(ctx):
        top = ctx.nlargest(5, "mean_kl_base")
        out["contexts"] = [{"context": c, "new_top1": "" if pd.isna(t) else str(t), "n": int(n),
                            "mean_kl_base": round(float(k), 4)}
                           for c, t, n, k in zip(top["context"], top["new_top1"], top["n"], top["mean_kl_base"], strict=True)]
    if rule == "concept_surge":
        out["concept"] = alarm["concept"]
    if rule == "malformed":
        out["trajectories"] = [a["traj_id"] for a in answers.get(name, []) if a.get("answer") is None][:20]
    return out


def _fallen(finals: pd.DataFrame, name: str, prev: str, limit: int = 20) -> list[str]:
    """Trajectories whose final gold belief fell most from ``prev`` to ``name`` (the most affected first)."""
    if finals is None or finals.empty:
        return []
    pivot = finals.pivot_table(index="traj_id", columns="checkpoint", values="gold_prob")
    if name not in pivot or prev not in pivot:
        return []
    change = (pivot[name] - pivot[prev]).dropna().sort_values()
    return change[change < 0].index[:limit].tolist()
