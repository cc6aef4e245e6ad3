"""AppTests for the drift pages: Checkpoints, Drift explorer, Perturbation lab (state set first, real data)."""

import time

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from workbench import state


def page(name: str, world, workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    return at


def texts(at) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


# ---- Drift explorer --------------------------------------------------------------------------------------
def test_explorer_overview_on_the_shipped_analysis(sample_world, tmp_path):
    at = page("explorer", sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception
    facts = {m.label: m.value for m in at.metric}
    assert facts["Trajectories"] == "200"
    assert facts["Worst checkpoint"] == "step 160" and facts["Detrimental change"] == "step 160"
    assert len(at.get("plotly_chart")) == 2  # summary over steps, accuracy per category
    drivers = at.dataframe(key="drivers-token").value
    assert len(drivers) > 0 and set(drivers["direction"]) == {"detrimental"}
    assert drivers["mean_effect_drift"].is_monotonic_increasing  # most detrimental first
    at.radio(key="driver_kind").set_value("concept").run()
    concepts = at.dataframe(key="drivers-concept").value
    assert not at.exception and len(concepts) > 0 and "concept" in concepts.columns


def test_explorer_trajectory_view_switches_trajectories_and_metrics(sample_world, tmp_path):
    at = page("explorer", sample_world, tmp_path / "ws")
    at.run()
    at.segmented_control[0].set_value("Trajectory").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2  # heatmap, belief lines
    picker = at.selectbox(key="explorer_trajectory")
    assert picker.options[0].startswith(picker.value + " · ") and "Lung Lesion" in picker.options[0]
    heat = at.get("plotly_chart")[0].proto.spec
    assert "checkpoint-160" in heat and "&lt;think&gt;" in heat  # rows by checkpoint, tokens escaped
    picker.set_value(picker.options[5].split(" · ")[0]).run()
    assert not at.exception and at.session_state[state.TRAJECTORY] == picker.value
    at.segmented_control(key="traj_belief_view").set_value("Every answer, one checkpoint").run()
    assert not at.exception and at.select_slider(key="traj_checkpoint").value == "checkpoint-160"
    assert "Lung Opacity" in at.get("plotly_chart")[1].proto.spec  # the answer it drifted to is drawn
    for metric in ("prob", "kl_prev", "effect"):
        at.selectbox(key="traj_metric").set_value(metric).run()
        assert not at.exception
    at.multiselect(key="traj_labels").set_value(["Edema"]).run()
    assert all("Edema" in o for o in at.selectbox(key="explorer_trajectory").options)
    at.text_input(key="traj_contains").input("no such words anywhere").run()
    assert "No trajectory matches" in at.warning[0].value


def test_explorer_without_any_analysis_points_to_checkpoints(tmp_path):
    at = page("explorer", tmp_path / "no-world", tmp_path / "ws")
    at.run()
    assert not at.exception
    assert "Cannot open the world" in at.warning[0].value
    assert "No drift analysis yet" in at.info[0].value


# ---- Checkpoints -----------------------------------------------------------------------------------------
def test_checkpoints_page_shows_the_sample_series_and_the_command(sample_world, tmp_path):
    at = page("checkpoints", sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception and not at.error
    series = at.dataframe[0].value
    assert list(series["step"]) == [40, 80, 120, 160, 200, 240] and series["reward"].notna().all()
    command = at.code[0].value
    assert command.startswith("workbench score --base ") and "--limit 50" in command
    assert not at.button(key="ck_run").disabled


def test_checkpoints_bad_folders_and_files_get_clear_messages(sample_world, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))
    at = page("checkpoints", sample_world, tmp_path / "ws")
    at.run()
    at.radio(key="ck_source").set_value("Local folders").run()
    at.text_input(key="ck_base").input(str(sample_world / "model")).run()
    at.text_input(key="ck_series").input(str(sample_world / "data")).run()
    assert not at.exception
    assert "no checkpoint-N/ folders found" in at.error[0].value and str(sample_world / "data") in at.error[0].value
    at.text_input(key="ck_base").input(str(sample_world / "rft" / "checkpoint-40")).run()
    assert "looks like an adapter" in at.error[0].value
    at.text_input(key="ck_base").input(str(sample_world / "model")).run()
    at.text_input(key="ck_series").input(str(sample_world / "rft")).run()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    at.radio(key="ck_data_kind").set_value("A JSONL file").run()
    at.text_input(key="ck_data").input(str(empty)).run()
    assert not at.exception
    assert any("no trajectories" in e.value and str(empty) in e.value for e in at.error)
    assert not [b for b in at.button if b.key == "ck_run"] and not at.code  # nothing to run until it is fixed


@pytest.mark.slow
def test_checkpoints_scores_in_the_background_and_lists_the_result(quick_world, tmp_path):
    at = page("checkpoints", quick_world, tmp_path / "ws")
    at.run()
    at.number_input(key="ck_limit").set_value(3).run()
    at.button(key="ck_run").click().run()
    assert not at.exception
    deadline = time.monotonic() + 120
    while "· running ·" in texts(at) or "· done ·" not in texts(at):
        assert time.monotonic() < deadline, texts(at)
        time.sleep(1)
        at.run()
    assert "· done ·" in texts(at)
    listed = at.dataframe(key="ck_analyses").value
    assert "test-" in listed.iloc[0]["analysis"] and listed.iloc[0]["trajectories"] == 3


# ---- Perturbation lab ------------------------------------------------------------------------------------
def test_perturbation_lab_swaps_a_finding_in_one_trajectory(sample_world, tmp_path):
    at = page("perturbation", sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception
    at.selectbox(key="lab_trajectory").set_value("test-00119").run()
    finding = at.selectbox(key="lab_pick")
    assert "masslike density" in finding.format_func(finding.value)
    at.button(key="lab_run").click().run()
    assert not at.exception
    summary = [m.value for m in at.markdown if "→" in m.value][0]
    assert "masslike density → mass" in summary and "of 7 checkpoints" in summary
    rows = at.dataframe[0].value
    assert len(rows) == 7 and {"answer_before", "answer_after", "flip"} <= set(rows.columns)
    # before the swap, the report reads "masslike density": the base answers Lung Lesion, step 160 Lung Opacity
    by = rows.set_index("checkpoint")
    assert by.at["base", "answer_before"] == "Lung Lesion" and by.at["checkpoint-160", "answer_before"] == "Lung Opacity"
    default_pair = at.selectbox(key="lab_pair")
    assert default_pair.format_func(default_pair.value) == "consolidation → airspace opacity"
    assert "--find consolidation --replace 'airspace opacity'" in at.code[0].value
