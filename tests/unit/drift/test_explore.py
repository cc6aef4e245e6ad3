"""Explorer views over the shipped sample analysis: rankings, filters, token matrices, belief paths."""

import numpy as np
import pandas as pd
import pytest

from core.drift import explore
from core.drift.analysis import Analysis
from core.graph import concepts
from core.graph.concepts import load_graph
from core.io.trajectories import read_jsonl
from core.perturb import text as perturb
from core.workspace.world import load_world


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

    from core.drift.analysis import LAZY_COLUMNS, AnalysisView

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
        want = whole[whole["traj_id"] == traj].reset_index(drop=True)
        got = view.rows(name, traj, top_k=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        assert opened[-1][1].get("filters") == [("traj_id", "==", traj)]
        pd.testing.assert_frame_equal(view.rows(name, traj), want.drop(columns=list(LAZY_COLUMNS), errors="ignore"),
                                      check_dtype=False)


def test_the_default_read_leaves_the_top_k_lists_out_and_a_window_reads_only_its_rows(shipped, tmp_path):
    from core.drift.analysis import LAZY_COLUMNS, AnalysisView

    a, _ = shipped
    view = AnalysisView.open(a.save(tmp_path / "copy"))
    traj = a.tokens["traj_id"].iloc[0]
    rows = view.rows("tokens", traj)
    assert len(rows) > 0 and not set(LAZY_COLUMNS) & set(rows.columns)  # what opening a trajectory reads
    assert {"token", "prob", "kl_base"} <= set(rows.columns)
    window = view.rows("tokens", traj, positions=(3, 7), top_k=True)
    assert set(LAZY_COLUMNS) <= set(window.columns) and sorted(window["position"].unique()) == [3, 4, 5, 6, 7]
    assert len(window) == 5 * rows["checkpoint"].nunique()
    assert view.rows("tokens", traj, columns=["position", "top_tokens"]).columns.tolist() == ["position", "top_tokens"]


# ---- a long CoT, a window at a time ---------------------------------------------------------------------
def long_matrix(n=1000, prompt=0):
    """3 checkpoints x n positions (``prompt`` of them negative, sparse: every other one), known peaks."""
    positions = [-2 * k for k in range(prompt, 0, -1)] + list(range(n - prompt))
    values = np.zeros((3, n))
    values[0] = np.nan  # the base row: nothing measured
    values[1, 700] = -0.9  # the largest in magnitude, detrimental
    values[2, 300] = 0.5
    direction = np.full((3, n), "neutral", dtype=object)
    direction[1, [120, 700]] = "detrimental"
    return explore.TokenMatrix("effect_drift", ["base", "c1", "c2"], positions, [f" t{p}" for p in positions],
                               values, None, direction)


def test_a_window_is_its_columns_with_hover_for_them_only():
    m = long_matrix()
    rows = pd.DataFrame({"checkpoint": "c1", "position": [400, 401], "token": [" t400", " t401"], "prob": 0.5,
                         "rank": 1, "top_tokens": [[" a", " b"]] * 2, "top_probs": [np.array([0.5, 0.2])] * 2})
    w = explore.window(m, 400, 150, rows)
    assert w.positions == list(range(400, 550)) and w.values.shape == (3, 150) == w.direction.shape
    assert w.first == 400 and w.width == 1000 and w.tokens[0] == " t400"
    assert w.hover[1][0] == "' t400' p=0.500 rank 1\ntop: ' a' 0.500, ' b' 0.200"
    assert w.hover[0][0] == "' t400'" and w.hover[1][2] == "' t402'"  # no row: the token alone
    end = explore.window(m, 990, 150)  # moved back to stay full
    assert end.positions[-1] == 999 and len(end.positions) == 150 and end.first == 850 and end.hover is None
    assert explore.window(explore.window(m, 0, 500), 100, 50).first == 100  # offsets add up


def test_windows_over_sparse_report_positions_start_at_the_next_measured_one():
    m = long_matrix(prompt=10)  # positions -20, -18, ..., -2, 0, 1, ...
    assert explore.window_column(m.positions, -5, 100) == 8 and explore.window(m, -5, 100).positions[0] == -4
    assert explore.centred_start(m.positions, 0, 10) == -10  # 0 is column 10: five columns before it
    assert explore.centred_start(m.positions, -20, 10) == -20 and explore.centred_start(m.positions, 989, 10) == 980


def test_navigation_finds_the_largest_drift_and_the_next_detrimental_position():
    m = long_matrix()
    assert explore.strongest_position(m) == 700
    assert explore.next_detrimental(m, -1) == 120 and explore.next_detrimental(m, 120) == 700
    assert explore.next_detrimental(m, 700) == 120  # from the start again
    m.direction[:] = "neutral"
    m.values[:] = np.nan
    assert explore.next_detrimental(m, 0) is None and explore.strongest_position(m) is None


def test_the_minimap_keeps_each_bins_peak_with_its_sign():
    m = long_matrix()
    mini = explore.minimap(m, bins=100)
    assert len(mini.values) == 100 and mini.starts[0] == 0 and mini.ends[-1] == 1000
    assert mini.values[70] == -0.9 and mini.values[30] == 0.5 and mini.values[0] == 0
    assert (mini.positions[1], mini.last_positions[1]) == (10, 19)
    assert (mini.lo, mini.hi) == (-0.9, 0.5)  # one colour scale for every window
    short = explore.minimap(explore.window(m, 0, 40), bins=100)  # fewer columns than bins: one per column
    assert len(short.values) == 40


def test_a_window_over_the_report_alone_shows_its_tokens(shipped, table):
    """A report longer than the window, "Include the report" on: the window's token rows are none (token
    metrics exist for the completion only); its hover is the tokens alone, not a TypeError adding str to float."""
    a, _ = shipped
    traj = table.iloc[0]["traj_id"]
    full = explore.token_matrix(a.tokens, a.effects, traj, "effect_drift", include_prompt=True, hover=False)
    report = [p for p in full.positions if p < 0]
    tok = a.tokens[a.tokens["traj_id"] == traj]
    rows = tok[tok["position"].between(report[0], report[-1])]
    assert rows.empty
    w = explore.window(full, report[0], len(report), rows)
    assert w.positions == report and w.hover[0] == [repr(t) for t in w.tokens]


def test_content_drivers_leave_out_punctuation_the_prompt_template_and_rare_tokens():
    import pandas as pd

    from core.drift.explore import content_drivers, sort_drivers

    t = pd.DataFrame({"checkpoint": ["c"] * 6, "token": [".", "Question", "opacity", "rib", "nodule", "of"],
                      "region": ["prompt", "prompt", "cot", "prompt", "prompt", "cot"], "n": [40, 20, 12, 2, 5, 30],
                      "mean_effect_drift": [-0.9, -0.8, -0.3, -0.7, -0.5, -0.1], "direction": ["detrimental"] * 6})
    shown = sort_drivers(content_drivers(t, n_trajectories=20), "token", "c", "detrimental")
    # "." has no letter; "Question" is read once in each of the 20 prompts; "rib" only twice
    assert list(shown["token"]) == ["nodule", "opacity", "of"]
    assert list(sort_drivers(t, "token", "c", "detrimental")["token"])[:2] == [".", "Question"]  # the old default


def test_unmeasured_drift_is_listed_not_filtered_out_nor_zero(shipped, table):
    """A trajectory with no probed gold (drift NaN) stays in the list under any drift filter (the slider's
    filter hid it); a base-only analysis has no worst checkpoint: drift NaN, not +0.00 at the base."""
    a, records = shipped
    unmeasured = table.assign(drift=table["drift"].where(table.index != len(table) - 1))  # the last one: NaN
    kept = explore.filter_trajectories(unmeasured, max_drift=-0.5)
    assert unmeasured.iloc[-1]["traj_id"] in set(kept["traj_id"])
    base_only = a.beliefs[explore.drift.is_base(a.beliefs)]
    only = explore.trajectory_table(base_only, a.effects.iloc[:0], records)
    assert len(only) == len(table) and only["drift"].isna().all() and only["worst_checkpoint"].isna().all()


def test_context_drivers_are_strongest_first_in_either_direction():
    table = pd.DataFrame({"checkpoint": ["c"] * 3, "direction": ["beneficial"] * 3, "context": ["a", "b", "c"],
                          "mean_kl_base": [0.1, 3.0, 1.0], "mean_effect_drift": [0.2, 0.1, 0.3]})
    for direction in ("beneficial", "all"):
        rows = explore.sort_drivers(table, "context", "c", direction)
        assert list(rows["context"]) == ["b", "c", "a"]
    assert list(explore.sort_drivers(table, "token", "c", "beneficial")["context"]) == ["c", "a", "b"]


def test_a_token_row_that_lists_its_cap_of_trajectories_says_so():
    row = {"token": " Lung", "checkpoint": "checkpoint-160",
           "trajectories": [f"t{i:03d}" for i in range(explore.drift.TRAJECTORIES_LISTED)]}
    ids, note = explore.driver_trajectories("token", row, [])
    assert len(ids) == 50 and "the first 50 by id" in note
    ids, note = explore.driver_trajectories("token", {**row, "trajectories": ["t1"]}, [])
    assert note == "token ' Lung' under checkpoint-160"
