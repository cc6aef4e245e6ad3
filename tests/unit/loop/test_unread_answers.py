"""Accuracy on a tiny foreign run says what it could not read (issue 24): the held-out evaluation's greedy accuracy
counts a malformed answer as wrong and says so (its share apart, each accuracy's denominator stated), and the probe
accuracy leaves out a trajectory whose own answer cannot be read (no gold to compare with), counted apart."""

import json

import pytest

from core.cpo import runs
from core.drift.analysis import AnalysisConfig, run_analysis
from core.perturb.evaluation import figures, held_out
from core.workspace import world as world_mod
from tests.conftest import SAMPLE_GRAPH


def test_malformed_answers_are_counted_apart_and_each_denominator_stated():
    records = [{"id": f"s{i}", "label": label} for i, label in enumerate(["Edema", "Edema", "Pneumonia", "Edema"])]
    twins = [{"id": "s0~syn", "source_id": "s0", "label": "Edema"}, {"id": "s2~syn", "source_id": "s2", "label": "Pneumonia"}]
    out = figures(records, ["Edema", None, "Edema", None], twins, ["Edema", None])
    assert (out["accuracy"], out["malformed"], out["studies"]) == (0.25, 0.5, 4)  # 1 right, 1 wrong, 2 unread
    assert (out["perturbed_accuracy"], out["perturbed_malformed"], out["perturbed_studies"]) == (0.5, 0.5, 2)
    assert out["flip_rate"] == 0.0  # the one twin read on both sides kept its answer; an unread one is no flip


@pytest.mark.slow
def test_a_foreign_runs_figures_say_what_they_could_not_read(foreign_run, tmp_path):
    """The TRL run as a world: its held-out figures (real greedy decoding of a barely trained model, which writes
    few readable answers) state malformed share and denominators; its analysis, over conversations one of which
    ends without an answer, gives the probe accuracy over the five it can compare, and says one was left out."""
    heldout = [json.loads(x) for x in foreign_run["heldout"].read_text().splitlines()][:5]
    unread = json.loads(json.dumps(heldout[0]))
    unread["id"] = "no-answer"
    unread["messages"][2]["content"] = (unread["messages"][2]["content"].split("</think>")[0]
                                        + "</think> I cannot tell which disease this patient has from the report.")
    data = tmp_path / "probe.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*heldout, unread]))
    w = world_mod.create_world(tmp_path / "trl", "trl", foreign_run["base"], [foreign_run["run"]], [data],
                               SAMPLE_GRAPH, held_out=foreign_run["heldout"])
    got = runs.evaluate_adapter(w.root, w.checkpoints[-1].path, 6)
    assert got["studies"] == 6 and 0 <= got["malformed"] <= 1 and 0 <= got["accuracy"] <= 1 - got["malformed"]
    twins = held_out(w, 6).perturbed
    assert got["perturbed_studies"] == len(twins) if twins else "perturbed_studies" not in got

    cfg = AnalysisConfig.from_world(w.root, dataset="probe", positions="end", batch_size=6)
    summary = run_analysis(cfg).summary.set_index("checkpoint")
    assert summary["probed"].tolist() == [5] * len(summary) and summary["no_gold"].tolist() == [1] * len(summary)
    assert summary["accuracy"].notna().all()
