"""A malformed answer is its own category, never a flip (issue 24): ``None != None`` is true in pandas, so a swap
under which no answer could be read, before or after, counted as a flip and a barely trained run "flipped" 1.0."""

import math

import pandas as pd

from core.io.trajectories import read_trajectories
from core.models.series import load_series
from core.perturb.evaluation import figures
from core.perturb.text import category_flips, perturbation_summary, perturbation_test
from tests import foreign


def test_a_foreign_runs_unreadable_answers_are_malformed_not_flips(foreign_run):
    """The TRL run's adapters (4 steps of SFT) write no readable answer yet: every row is malformed, none a flip."""
    series = load_series(foreign_run["base"], foreign_run["run"])
    records = [r for r in read_trajectories(foreign_run["heldout"]) if "consolidation" in r["prompt"]][:3]
    df = perturbation_test(series, records, "consolidation", "airspace opacity", sorted(foreign.DISEASES), "generate")
    assert len(df) and set(df.columns) >= {"malformed", "flip"}
    assert df["malformed"].any() and not (df["flip"] & df["malformed"]).any()  # some unread, never both
    summary = perturbation_summary(df)
    unread = df.groupby("checkpoint")["malformed"].all()
    for row in summary.itertuples():
        if unread[row.checkpoint]:
            assert math.isnan(row.flip_rate) and row.malformed == 1.0  # no pair read: no rate, not 1.0
        else:
            assert 0 <= row.flip_rate <= 1


def test_flip_rates_count_only_pairs_whose_answers_were_read():
    df = pd.DataFrame({"traj_id": list("abcd"), "checkpoint": "c", "step": 2, "gold": ["Edema"] * 4,
                       "answer_before": ["Edema", None, "Edema", None], "answer_after": ["Edema", None, "Pneumonia", "Edema"],
                       "belief_change": float("nan")})
    summary = perturbation_summary(df).iloc[0]
    assert summary["flip_rate"] == 0.5 and summary["malformed"] == 0.5 and summary["n"] == 4
    cats = category_flips(df).iloc[0]
    assert cats["flip_rate"] == 0.5 and cats["malformed"] == 0.5
    recs = [{"id": "a", "label": "Edema"}, {"id": "b", "label": "Edema"}]
    twins = [{"id": "a~", "source_id": "a", "label": "Edema"}, {"id": "b~", "source_id": "b", "label": "Edema"}]
    out = figures(recs, [None, "Edema"], twins, [None, "Edema"])  # a's answer malformed both times: not a flip
    assert out["flip_rate"] == 0.0 and out["perturbed_malformed"] == 0.5
    assert figures(recs, [None, None], twins, [None, None])["flip_rate"] is None  # no rate, not 0 or 1


def test_a_malformed_answer_is_never_right_beside_a_twin_without_a_label():
    """A twin whose own label could not be read (None) and a malformed answer (None) were counted right: None == None."""
    recs = [{"id": "a", "label": "Edema"}]
    twins = [{"id": "a~", "source_id": "a", "label": None, "category": "Edema"}]
    out = figures(recs, ["Edema"], twins, [None])
    assert out["perturbed_accuracy"] == 0.0 and out["perturbed_malformed"] == 1.0
    assert figures([{"id": "b", "label": None, "category": "x"}], [None])["per_category"] == {"x": 0.0}
