"""Scoring without the probe: a foreign run whose records carry no label and state no answer (and no graph)
is scored for token drift, says that it ran without the probe, and every reader of the analysis copes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.drift import explore
from core.drift import findings as drift
from core.drift.analysis import Analysis, AnalysisConfig, AnalysisView, run_analysis
from core.drift.probe import NO_LABELS
from tests import foreign

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def unlabelled(foreign_run, tmp_path_factory) -> Path:
    """The held-out conversations with the answer sentence cut off and no label: nothing names an answer."""
    out = tmp_path_factory.mktemp("nolabels") / "unlabelled.jsonl"
    rows = []
    for line in Path(foreign_run["heldout"]).read_text().splitlines()[:3]:
        rec = json.loads(line)
        cot = rec["messages"][-1]["content"]
        rec["messages"][-1]["content"] = cot[: cot.index("</think>") + len("</think>")]
        rows.append(json.dumps(rec))
    out.write_text("\n".join(rows) + "\n")
    return out


@pytest.fixture(scope="module")
def scored(foreign_run, unlabelled):
    cfg = AnalysisConfig(base=str(foreign_run["base"]), checkpoints=str(foreign_run["run"]), data=str(unlabelled),
                         batch_size=4)
    messages = []
    return run_analysis(cfg, progress=lambda d, t, m: messages.append(m)), messages


def test_scoring_runs_without_the_probe_and_says_so(scored, tmp_path):
    a, messages = scored
    assert any(NO_LABELS in m for m in messages)
    assert not a.probed and a.beliefs.empty and a.effects.empty
    assert set(a.tokens["checkpoint"]) == {"base", "checkpoint-2", "checkpoint-4"}
    # token drift is kept: one summary row per checkpoint, KL measured, accuracy not
    assert list(a.summary["checkpoint"]) == ["base", "checkpoint-2", "checkpoint-4"]
    assert a.summary["kl_base"].iloc[1:].gt(0).all() and a.summary["accuracy"].isna().all()
    assert a.changes.empty and a.by_token.empty and drift.category_accuracy(a.beliefs).empty

    view = AnalysisView.open(a.save(tmp_path / "out"))
    assert not view.probed
    table = view.trajectories()
    assert len(table) == 3 and table["drift"].isna().all() and table["gold"].isna().all()
    assert view.category_accuracy().empty
    loaded = Analysis.load(tmp_path / "out")
    assert not loaded.probed and len(loaded.tokens) == len(a.tokens)
    m = explore.token_matrix(loaded.tokens, loaded.effects, table["traj_id"][0], "kl_base")
    assert m.values.shape[0] == 3


def test_the_explorer_shows_token_drift_and_the_note(scored, tmp_path):
    from streamlit.testing.v1 import AppTest

    from workbench import state

    out = scored[0].save(tmp_path / "ws" / "analyses" / "unprobed")
    at = AppTest.from_file(str(ROOT / "pages" / "explorer.py"), default_timeout=120)
    at.session_state[state.WORKSPACE_PATH] = str(tmp_path / "ws")
    at.session_state[state.ANALYSIS] = str(out)
    at.run()
    assert not at.exception
    assert any("without the answer probe" in i.value for i in at.info)
    at.session_state[state.EXPLORER_VIEW] = "Trajectory"
    at.run()
    assert not at.exception
    assert at.selectbox(key="traj_metric").value == "kl_base"
    assert "effect_drift" not in at.selectbox(key="traj_metric").options
    assert any("without the answer probe" in c.value for c in at.caption)


@pytest.mark.slow
def test_the_cli_prints_the_note(foreign_run, unlabelled, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "score", "--base", str(foreign_run["base"]),
                          "--checkpoints", str(foreign_run["run"]), "--data", str(unlabelled), "--out",
                          str(tmp_path / "a"), "--no-cache"], capture_output=True, text=True, env=env, cwd=ROOT,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "scored without the probe" in out.stdout
    assert not AnalysisView.open(tmp_path / "a").probed


def test_a_worlds_answer_format_reads_the_answers_of_unlabelled_records(foreign_run, tmp_path):
    """Records without a label whose completions answer "Verdict: X": the analysis read them with the default
    format, whose bare-answer rule took "Verdict: Edema" for a label, so the probe's labels and the gold answers
    were words the model never answers with. The config's answer format (a world's, from world.json) reads "Edema"."""
    import re

    rows = []
    for line in Path(foreign_run["heldout"]).read_text().splitlines()[:3]:
        rec = json.loads(line)
        text = rec["messages"][-1]["content"]
        answer = next(d for d in foreign.DISEASES if re.search(rf"\b{d}\.?\s*$", text))
        rec["messages"][-1]["content"] = text[: text.index("</think>") + len("</think>")] + " Verdict: " + answer
        rec.pop("label", None)
        rows.append(json.dumps(rec))
    data = tmp_path / "verdicts.jsonl"
    data.write_text("\n".join(rows) + "\n")
    fmt = {"pattern": r"Verdict: (?P<answer>.+)", "sentence": "Verdict: {}", "template": " </think> Verdict:"}
    cfg = AnalysisConfig(base=str(foreign_run["base"]), checkpoints=str(foreign_run["run"]), data=str(data),
                         batch_size=4, positions="end", template=fmt["template"], answer_format=fmt)
    a = run_analysis(cfg)
    assert a.probed and not any(str(g).startswith("Verdict") for g in a.beliefs["gold"])
    assert set(a.beliefs["gold"]) <= set(foreign.DISEASES)
    assert AnalysisView.open(a.save(tmp_path / "out")).trajectories()["gold"].notna().all()
    with pytest.raises(ValueError, match=r"answer_format.pattern: expected a group"):
        AnalysisConfig(base=str(foreign_run["base"]), data=str(data), answer_format={"pattern": "Verdict"})
