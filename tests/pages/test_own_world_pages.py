"""AppTests on a world of your own (a TRL-made run): the Checkpoints page's series and world controls, the
sidebar's world picker, and the pages that must work on it without any sample-world special case."""

import pytest
from streamlit.testing.v1 import AppTest

from core.workspace import world as world_mod
from tests.conftest import ROOT, SAMPLE_GRAPH
from workbench import state


def series_table(at):
    """The checkpoint table (st.dataframe without selection keeps no key in AppTest)."""
    return next(d.value for d in at.dataframe if "objective" in d.value.columns)


def page(name: str, world, workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    return at


@pytest.fixture(autouse=True)
def user_folders_are_a_data_root(foreign_run, monkeypatch):
    """The user's run lies outside the workspace: typed paths there need it among the data roots."""
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(foreign_run["base"].parent.parent))


@pytest.fixture(scope="module")
def own_world(foreign_run, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    w = world_mod.create_world(world_mod.world_dir(ws, "trl run"), "trl run", foreign_run["base"],
                               [foreign_run["run"]], [foreign_run["train"]], SAMPLE_GRAPH,
                               held_out=foreign_run["heldout"])
    return ws, w.root


def test_checkpoints_page_shows_training_facts_and_the_base_name_warning_then_keeps_a_world(
        sample_world, foreign_run, tmp_path):
    at = page("checkpoints", sample_world, tmp_path / "ws")
    at.run()
    at.radio(key="ck_source").set_value("Local folders").run()
    at.text_input(key="ck_base").input(str(foreign_run["base"])).run()
    at.text_input(key="ck_series").input(str(foreign_run["swift"])).run()
    assert not at.exception
    table = series_table(at)
    assert list(table["checkpoint"]) == ["checkpoint-2", "checkpoint-4", "checkpoint-4-merged"]
    assert list(table["objective"]) == ["sft"] * 3 and table["LoRA r"].iloc[0] == 4 and table["lr"].iloc[0] == 5e-3
    assert any("base_model_name_or_path" in w.value and "loaded anyway" in w.value for w in at.warning)
    assert [e.value for e in at.error] == ["Choose the trajectories to analyse."]  # a warning, not a refusal
    at.radio(key="ck_data_kind").set_value("A JSONL file").run()
    at.text_input(key="ck_data").input(str(foreign_run["train"])).run()
    assert at.button(key="ck_run") and not at.exception
    at.text_input(key="ck_world_name").input("from the page").run()
    refusals = []
    for outside in ("/etc/passwd", "/etc/no-such-held-out.jsonl"):  # one message: whether it exists is not told
        at.text_input(key="ck_world_eval").input(outside).run()
        at.button(key="ck_world_create").click().run()
        refusals.append([e.value.replace(outside, "PATH") for e in at.error])
    assert refusals[0] == refusals[1] and "not under the data roots" in refusals[0][0]
    assert not (tmp_path / "ws" / "worlds" / "from-the-page").exists()
    at.text_input(key="ck_world_eval").input(str(foreign_run["heldout"])).run()
    at.button(key="ck_world_create").click().run()
    assert not at.exception and not at.error
    created = world_mod.load_world(tmp_path / "ws" / "worlds" / "from-the-page")
    assert [c.name for c in created.checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-4-merged"]
    assert at.session_state[state.NEXT_WORLD] == str(created.root)


def test_the_world_picker_lists_and_opens_your_own_world(own_world, monkeypatch):
    ws, root = own_world
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(ws))
    at = AppTest.from_file(str(ROOT / "workbench" / "app.py"), default_timeout=60)
    at.run()
    picker = next(s for s in at.selectbox if s.label == "World")
    # shown by folder name: the worlds installed packages provide (the demo's two sample worlds), then the
    # workspace's own
    assert picker.options == ["sample_data", "multimodal", "trl-run"]
    picker.set_value(str(root)).run()
    assert not at.exception
    assert at.subheader[0].value == "trl run" and at.session_state[state.WORLD_PATH] == str(root)
    picker = next(s for s in at.selectbox if s.label == "World")
    assert picker.value == str(root)  # a new picker, opened on the world just picked


def test_picking_another_world_leaves_the_last_worlds_analysis_and_previews(own_world, sample_world, monkeypatch):
    """The explorer showed the analysis last opened in the other world (its charts titled with the new world's name)
    after the sidebar switched worlds: the session's choices made in a world go with it."""
    ws, root = own_world
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(ws))
    at = AppTest.from_file(str(ROOT / "workbench" / "app.py"), default_timeout=60)
    at.run()
    next(s for s in at.selectbox if s.label == "World").set_value(str(root)).run()
    chosen = {state.ANALYSIS: str(ws / "analyses" / "trl-run-scored"), state.TRAJECTORY: "conv-3",
              state.DRIVER_IDS: ["conv-3"], state.CF_LAST: {"id": "conv-3"}}
    for key, value in chosen.items():
        at.session_state[key] = value
    at.run()
    next(s for s in at.selectbox if s.label == "World").set_value(str(sample_world)).run()
    assert not at.exception and at.session_state[state.WORLD_PATH] == str(sample_world)
    assert all(at.session_state[k] is None for k in (state.ANALYSIS, state.TRAJECTORY, state.DRIVER_IDS,
                                                        state.CF_LAST) if k in at.session_state)
    assert at.session_state[state.WORKSPACE_PATH] == str(ws)  # the session itself stays


def test_the_picker_opens_a_world_a_page_just_created_and_stays_on_it(own_world, monkeypatch):
    ws, root = own_world
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(ws))
    at = AppTest.from_file(str(ROOT / "workbench" / "app.py"), default_timeout=60)
    at.run()
    at.session_state[state.NEXT_WORLD] = str(root)  # as the Checkpoints page leaves it after "Create the world"
    at.run()
    picker = next(s for s in at.selectbox if s.label == "World")
    assert not at.exception and picker.value == str(root) and at.session_state[state.WORLD_PATH] == str(root)
    at.run()  # a later run (another page, a widget) keeps the world
    assert at.session_state[state.WORLD_PATH] == str(root)


def test_home_and_checkpoints_work_on_your_own_world(own_world):
    ws, root = own_world
    at = page("home", root, ws)
    at.run()
    assert not at.exception and at.subheader[0].value == "trl run"
    at = page("checkpoints", root, ws)
    at.run()
    assert not at.exception
    assert list(series_table(at)["checkpoint"]) == ["checkpoint-2", "checkpoint-4"]
    datasets = at.selectbox(key="ck_dataset").options
    assert any("train" in d for d in datasets) and any("held_out" in d for d in datasets)


def test_runs_page_on_your_own_world_has_no_sample_world_defaults(own_world):
    ws, root = own_world
    at = page("runs", root, ws)
    at.run()
    assert not at.exception
    assert not any("sample" in o for o in at.selectbox(key="run_data").options)
    assert at.number_input(key="run_learning_rate").value == pytest.approx(2e-5)  # the authors' default, not the demo's


@pytest.mark.parametrize("name", ["explorer", "perturbation", "graph_editor", "counterfactuals", "curation"])
def test_every_other_page_opens_on_your_own_world(own_world, name):
    ws, root = own_world
    at = page(name, root, ws)
    at.run()
    assert not at.exception, name


def test_counterfactuals_page_rewrites_a_conversational_trajectory_of_your_own_world(own_world):
    ws, root = own_world
    at = page("counterfactuals", root, ws)
    at.run()
    assert at.selectbox(key="cf_dataset").value == "train" and len(at.selectbox(key="cf_record").options) == 24
    assert not at.exception


def test_checkpoints_page_probes_a_world_as_its_completions_answer(own_world, tmp_path):
    """A world whose completions answer "Answer: X" (world.json's answer_format) is scored from the Checkpoints
    page with its own probe template; the page kept the default " </think> The disease of this patient is",
    probing in words the model never wrote, while ``AnalysisConfig.from_world`` used the world's."""
    import json
    import shutil

    ws, root = own_world
    mine = tmp_path / "answers-world"
    shutil.copytree(root, mine)
    manifest = json.loads((mine / "world.json").read_text())
    manifest["answer_format"] = {"pattern": r"Answer: (?P<answer>.+)", "sentence": "Answer: {}",
                                 "template": " </think> Answer:"}
    (mine / "world.json").write_text(json.dumps(manifest))
    at = page("checkpoints", mine, ws)
    at.run()
    assert not at.exception
    assert at.text_input(key=state.setting("ck", "template")).value == " </think> Answer:"
    assert json.loads(at.text_input(key=state.setting("ck", "answer_format")).value) == manifest["answer_format"]
    assert "</think> Answer:" in at.code[0].value  # the command the Score button runs probes with it
    at = page("checkpoints", root, ws)
    at.run()  # a world without one keeps the default
    assert at.text_input(key=state.setting("ck", "template")).value == " </think> The disease of this patient is"
    manifest["answer_format"] = {"pattern": "Answer"}  # no group capturing the answer
    (mine / "world.json").write_text(json.dumps(manifest))
    at = page("checkpoints", mine, ws)
    at.run()  # named on the page, not a traceback; nothing can be scored until it is mended
    assert not at.exception and "ck_run" not in [b.key for b in at.button]
    assert any("world.json: answer_format.pattern: expected a group" in e.value for e in at.error)  # the file named
