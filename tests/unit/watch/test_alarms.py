"""Alarms over the step axis: the defaults fire on the sample world's shortcut (step 160) and nowhere before it;
each rule names its step, figure and evidence; a rule that keeps holding is not raised again."""

from __future__ import annotations

import pandas as pd
import pytest

from core.drift import findings as drift
from core.drift.analysis import AnalysisView
from core.watch import alarms
from core.watch.config import WatchConfig

CFG = WatchConfig(run="x")


@pytest.fixture(scope="module")
def shipped(sample_world):
    view = AnalysisView.open(sample_world / "analysis")
    return view, drift.final_beliefs(view.table("beliefs"))


def _all(view, finals, cfg=CFG, answers=None) -> list[dict]:
    return [a for ck in view.summary["checkpoint"] for a in alarms.evaluate(
        view.summary, view.by_concept, view.by_token, view.by_context, finals, answers or {}, cfg, ck)]


def test_the_sample_worlds_shortcut_raises_the_alarms_at_step_160_and_none_before(shipped):
    view, finals = shipped
    found = _all(view, finals)
    at = {a["rule"] for a in found if a["step"] == 160}
    assert {"belief_fall", "kl_jump", "detrimental_rise", "concept_surge"} <= at
    assert not [a for a in found if a["step"] < 160]
    belief = next(a for a in found if a["rule"] == "belief_fall")
    assert belief["page_hinkley"] and belief["previous"] - belief["value"] > 0.2  # 0.98 -> 0.76
    kl = next(a for a in found if a["rule"] == "kl_jump")
    assert kl["value"] > 10 * kl["previous"]  # 0.81 nats vs a median of 0.07
    ev = belief["evidence"]  # what drove it: the contexts whose next token became " Lung", the studies that fell most
    assert any(c["new_top1"].strip() == "Lung" and c["context"].endswith("suggests") for c in ev["contexts"])
    fin = finals.pivot_table(index="traj_id", columns="checkpoint", values="gold_prob")
    fell = (fin["checkpoint-160"] - fin["checkpoint-120"]).sort_values()
    assert ev["trajectories"][:5] == fell.index[:5].tolist()
    surge = next(a for a in found if a["rule"] == "concept_surge" and a["step"] == 160)
    assert surge["value"] < -0.3 and surge["others"]  # several findings at once, the strongest named first


def test_stricter_thresholds_stay_quiet_and_looser_ones_fire_earlier(shipped):
    view, finals = shipped
    strict = WatchConfig(run="x", belief_drop=0.5, page_hinkley=1.0, detrimental_rise=0.2, concept_drop=1.0, kl_jump=50,
                         kl_min=5)
    assert [a["rule"] for a in _all(view, finals, strict)] == []
    loose = WatchConfig(run="x", concept_drop=0.05)
    assert min(a["step"] for a in _all(view, finals, loose) if a["rule"] == "concept_surge") == 80


def _line(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values()))) if cols else 3
    base = {"checkpoint": ["base"] + [f"checkpoint-{i}" for i in range(1, n)], "step": list(range(n)),
            "accuracy": [1.0] * n, "final_gold_prob": [0.9] * n, "kl_base": [0.0] + [0.1] * (n - 1),
            "kl_prev": [0.0] + [0.1] * (n - 1), "js_base": [0.0] * n, "entropy": [0.5] * n,
            "share_detrimental": [0.0] + [0.05] * (n - 1), "share_beneficial": [0.0] * n}
    return pd.DataFrame({**base, **cols})


def _eval(line, ck, answers=None, cfg=CFG):
    return alarms.evaluate(line, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), answers or {}, cfg, ck)


def test_entropy_collapse_and_malformed_answers_then_no_repeat_while_they_hold():
    line = _line(entropy=[0.5, 0.45, 0.2, 0.1])
    assert [a["rule"] for a in _eval(line, "checkpoint-2")] == ["entropy_collapse"]
    assert _eval(line, "checkpoint-3") == []  # still collapsed: raised once
    answers = {"checkpoint-1": [{"traj_id": "a", "answer": "Edema"}] * 4,
               "checkpoint-2": [{"traj_id": "a", "answer": None}] * 3 + [{"traj_id": "b", "answer": "Edema"}]}
    bad = [a for a in _eval(_line(), "checkpoint-2", answers) if a["rule"] == "malformed"]
    assert bad and bad[0]["value"] == 0.75 and bad[0]["evidence"]["trajectories"] == ["a", "a", "a"]
    assert [a for a in _eval(_line(), "checkpoint-1", answers) if a["rule"] == "malformed"] == []


def test_a_stationary_series_raises_nothing_and_nan_is_no_alarm():
    line = _line(final_gold_prob=[0.9, 0.91, 0.89, 0.9, 0.9], kl_prev=[0, 0.1, 0.12, 0.09, 0.11],
                 share_detrimental=[0, 0.04, 0.05, 0.045, 0.05])
    assert [a for ck in line["checkpoint"] for a in _eval(line, ck)] == []
    unprobed = _line(final_gold_prob=[float("nan")] * 3, share_detrimental=[float("nan")] * 3)
    assert [a for ck in unprobed["checkpoint"] for a in _eval(unprobed, ck)] == []
