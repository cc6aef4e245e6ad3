"""Explorer views over the shipped sample analysis: rankings, filters, token matrices, belief paths."""

import numpy as np
import pytest

from core import concepts, explore, perturb
from core.analysis import Analysis
from core.concepts import load_graph
from core.trajectories import read_jsonl
from core.world import load_world


@pytest.fixture(scope="module")
def shipped(sample_world):
    world = load_world(sample_world)
    assert world.analysis_dir is not None, "the sample world ships its drift analysis (analysis/)"
    a = Analysis.load(world.analysis_dir)
    return a, read_jsonl(a.config.data, a.config.limit)


@pytest.fixture(scope="module")
def table(shipped):
    a, records = shipped
    return explore.trajectory_table(a.beliefs, a.effects, records)


def test_trajectory_table_ranks_the_most_drifted_first(shipped, table):
    a, _ = shipped
    assert len(table) == a.beliefs["traj_id"].nunique() == a.config.limit
    assert table["drift"].is_monotonic_increasing
    worst = table.iloc[0]
    # the shortcut the world was built with: a lesion / oedema study answered Lung Opacity at step 160
    assert worst["drift"] < -0.9 and worst["worst_answer"] == "Lung Opacity" and worst["base_answer"] == worst["gold"]
    assert (table["base_belief"] + table["drift"] - table["worst_belief"]).abs().max() < 1e-6  # float32


def test_filters_combine(table):
    lesions = explore.filter_trajectories(table, labels=["Lung Lesion"])
    assert len(lesions) > 0 and set(lesions["gold"]) == {"Lung Lesion"}
    drifted = explore.filter_trajectories(table, max_drift=-0.5)
    assert (drifted["drift"] <= -0.5).all() and len(drifted) < len(table)
    opacity = explore.filter_trajectories(table, contains="OPACITY")
    assert len(opacity) > 0 and opacity["completion"].str.lower().str.contains("opacity").all()
    assert explore.filter_trajectories(table, ids=["nope"]).empty


@pytest.mark.parametrize("metric", list(explore.METRICS))
def test_token_matrix_aligns_tokens_with_values(shipped, table, metric):
    a, records = shipped
    traj = table.iloc[0]["traj_id"]
    m = explore.token_matrix(a.tokens, a.effects, traj, metric)
    assert m.checkpoints[0] == "base" and len(m.checkpoints) == a.summary.shape[0]
    assert m.values.shape == (len(m.checkpoints), len(m.positions)) == m.direction.shape
    assert len(m.tokens) == len(m.positions) and len(m.hover) == len(m.checkpoints)
    completion = next(r["completion"] for r in records if r["id"] == traj)
    assert "".join(m.tokens).strip().startswith(completion[:20].strip())
    if metric in ("kl_base", "effect_drift"):  # the base row is the reference
        assert np.nanmax(np.abs(m.values[0])) < 1e-6
    if metric == "prob":
        assert np.nanmin(m.values) >= 0 and np.nanmax(m.values) <= 1


def test_token_matrix_can_include_the_report(shipped, table):
    a, _ = shipped
    traj = table.iloc[0]["traj_id"]
    cot = explore.token_matrix(a.tokens, a.effects, traj, "effect_drift")
    full = explore.token_matrix(a.tokens, a.effects, traj, "effect_drift", include_prompt=True)
    assert full.positions[0] < 0 and full.positions[-len(cot.positions):] == cot.positions
    assert "Report" in "".join(full.tokens)
    # the detrimental step of this trajectory is in the report: a finding read differently at step 160
    row = full.checkpoints.index("checkpoint-160")
    assert (full.direction[row][: len(full.positions) - len(cot.positions)] == "detrimental").any()


def test_unknown_trajectory_and_metric_are_named(shipped):
    a, _ = shipped
    with pytest.raises(KeyError, match="nope"):
        explore.token_matrix(a.tokens, a.effects, "nope", "prob")
    with pytest.raises(ValueError, match="metric"):
        explore.token_matrix(a.tokens, a.effects, a.tokens["traj_id"].iloc[0], "loudness")
    with pytest.raises(KeyError, match="nope"):
        explore.belief_path(a.beliefs, "nope")


def test_belief_path_and_top_labels(shipped, table):
    a, _ = shipped
    traj = table.iloc[0]
    path = explore.belief_path(a.beliefs, traj["traj_id"])
    assert list(dict.fromkeys(path["checkpoint"]))[0] == "base"
    top = explore.top_labels(path, 4)
    assert top[0] == traj["gold"] and "Lung Opacity" in top and len(top) == 4


def test_concept_trajectories_match_whole_words_any_case():
    records = [{"id": "a", "completion": "Opacity suggests X."}, {"id": "b", "completion": "opacityish"},
               {"id": "c", "completion": "lung opacity here"}]
    assert explore.concept_trajectories(records, ["opacity"]) == ["a", "c"]
    assert explore.concept_trajectories(records, []) == []


def test_synonym_swaps_found_in_a_record(sample_world):
    g = load_graph(sample_world / "concept_graph.json")
    swaps = concepts.synonym_sets(g)
    assert swaps["consolidation"][0] == "consolidation" and "airspace opacity" in swaps["consolidation"]
    record = {"prompt": "Report: shows airspace opacity.", "completion": "<think> airspace opacity suggests X. </think>"}
    found = perturb.swaps_in(record, g)
    assert ("consolidation", "airspace opacity", ["consolidation", "airspace consolidation"]) in found
    assert found == sorted(found, key=lambda f: -len(f[1]))


def test_hover_text_equals_the_former_cell_by_cell_build(shipped, table):
    a, _ = shipped
    traj = table.iloc[0]["traj_id"]
    m = explore.token_matrix(a.tokens, a.effects, traj, "effect_drift", include_prompt=True)
    ctx = a.tokens[a.tokens["traj_id"] == traj].set_index(["checkpoint", "position"])
    for name, row in zip(m.checkpoints, m.hover, strict=True):
        for p, t, got in zip(m.positions, m.tokens, row, strict=True):
            if (name, p) not in ctx.index:
                assert got == repr(t)
                continue
            r = ctx.loc[(name, p)]
            alts = ", ".join(f"{x!r} {q:.3f}" for x, q in zip(r["top_tokens"], r["top_probs"], strict=True))
            assert got == f"{t!r} p={r['prob']:.3f} rank {int(r['rank'])}\ntop: {alts}"


def test_a_saved_analysis_is_self_contained_and_read_by_trajectory(shipped, tmp_path, monkeypatch):
    """The folder keeps the texts it scored and the explorer's ranking; a view opens with the summary tables
    only and reads one trajectory's rows by filter, equal to the whole table's."""
    import dataclasses

    import pandas as pd

    from core.analysis import AnalysisView

    a, records = shipped
    out = dataclasses.replace(a, records=records).save(tmp_path / "copy")
    opened = []
    real = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda path, *x, **k: opened.append((str(path), k)) or real(path, *x, **k))
    view = AnalysisView.open(out)
    assert not any(p.endswith(("tokens.parquet", "beliefs.parquet", "effects.parquet")) for p, _ in opened)
    view.config.data = str(tmp_path / "moved-away.jsonl")
    assert [r["id"] for r in view.records()] == [r["id"] for r in records]
    want = explore.trajectory_table(a.beliefs, a.effects, records)
    pd.testing.assert_frame_equal(view.trajectories(), want, check_dtype=False)
    traj = want.iloc[0]["traj_id"]
    for name in ("tokens", "beliefs", "effects"):
        whole = getattr(a, name)
        got = view.rows(name, traj)
        pd.testing.assert_frame_equal(got, whole[whole["traj_id"] == traj].reset_index(drop=True), check_dtype=False)
        assert opened[-1][1].get("filters") == [("traj_id", "==", traj)]
