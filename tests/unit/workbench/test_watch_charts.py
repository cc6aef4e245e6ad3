"""The Watch page's chart builders as pure functions."""

import pandas as pd

from workbench import watch_charts

SUMMARY = pd.DataFrame({"checkpoint": ["base", "checkpoint-2", "<b>checkpoint-4</b>"], "step": [0, 2, 4],
                        "accuracy": [1.0, 0.9, 0.5], "final_gold_prob": [0.95, 0.9, 0.5], "kl_base": [0.0, 0.1, 1.2],
                        "kl_prev": [0.0, 0.1, 1.1], "entropy": [0.3, 0.3, 0.6], "share_detrimental": [0.0, 0.04, 0.1]})
HISTORY = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [1.0, 0.8, None, 0.7], "reward": [0.2, 0.3, 0.5, 0.9]})
ALARMS = [{"step": 4, "rule": "kl_jump", "figure": "KL", "value": 1.1, "message": "m1",
           "evidence": {"tokens": [{"token": "opacity", "n": 5}], "contexts": [], "trajectories": ["a"]}},
          {"step": 4, "rule": "<i>belief_fall</i>", "message": "m2"}]


def test_drift_curves_beside_the_trainers_log_with_the_alarms_marked():
    fig = watch_charts.watch_curves(SUMMARY, HISTORY, ALARMS)
    names = [t.name for t in fig.data]
    assert "final gold-answer belief" in names and "KL to previous step" in names
    assert names[-2:] == ["trainer loss", "trainer reward"]
    loss = next(t for t in fig.data if t.name == "trainer loss")
    assert list(loss.x) == [1, 2, 4]  # a step without a logged loss leaves no point
    assert list(fig.data[0].customdata)[2] == "&lt;b&gt;checkpoint-4&lt;/b&gt;"  # labels escaped
    marks = [a.text for a in fig.layout.annotations]
    assert marks == ["alarm: kl_jump, &lt;i&gt;belief_fall&lt;/i&gt;"]


def test_no_scored_step_yet_draws_the_trainers_log_only():
    fig = watch_charts.watch_curves(pd.DataFrame(), HISTORY, [])
    assert [t.name for t in fig.data] == ["trainer loss", "trainer reward"]


def test_alarm_tables_newest_first_and_their_evidence():
    table = watch_charts.alarm_table(ALARMS)
    assert table["rule"].tolist() == ["<i>belief_fall</i>", "kl_jump"]
    ev = watch_charts.evidence_tables(ALARMS[0])
    assert list(ev) == ["tokens"] and ev["tokens"]["token"].tolist() == ["opacity"]
