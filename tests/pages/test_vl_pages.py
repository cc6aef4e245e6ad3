"""AppTests of a user's vision-language run: the Checkpoints page registers and loads it, and the explorer
shows a trajectory's X-ray beside its chain of thought (a text-only world shows no image)."""


import pytest
from streamlit.testing.v1 import AppTest

from core.drift.analysis import AnalysisConfig, run_analysis
from tests.conftest import ROOT
from tests.vl_world import LABELS, make_vl_world
from workbench import state


def page(name: str, world, workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    return at


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    """A VL world and its analysis in a workspace's analyses/ folder (as the Score button leaves it)."""
    root = tmp_path_factory.mktemp("vlpages")
    world = make_vl_world(root / "run")
    ws = root / "ws"
    cfg = AnalysisConfig.from_world(world, batch_size=4, positions="sentence", labels=LABELS, limit=4)
    out = run_analysis(cfg).save(ws / "analyses" / "test-vl")
    return world, ws, out


def images_shown(at) -> int:
    """Pictures drawn by st.image (an ``image`` element holds a list of them)."""
    return sum(len(e.value) for e in at.get("image"))


def test_explorer_shows_the_x_ray_beside_the_cot(vl):
    world, ws, out = vl
    at = page("explorer", world, ws)
    at.session_state[state.ANALYSIS] = str(out)
    at.session_state[state.EXPLORER_VIEW] = "Trajectory"
    at.run()
    assert not at.exception and not at.error
    assert images_shown(at) == 1  # the record's one image
    caption = at.get("image")[0].captions[0]
    assert caption == at.selectbox(key="explorer_trajectory").value
    assert any("<image>" in t.value for t in at.text)  # the prompt with its placeholder beside it


def test_explorer_on_a_text_world_shows_no_image(sample_world, tmp_path):
    at = page("explorer", sample_world, tmp_path / "ws")
    at.session_state[state.EXPLORER_VIEW] = "Trajectory"
    at.run()
    assert not at.exception and images_shown(at) == 0


def test_checkpoints_page_loads_and_registers_a_vl_run(vl, tmp_path, monkeypatch):
    world, ws, _ = vl
    at = page("checkpoints", world, ws)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = next(d.value for d in at.dataframe if "objective" in d.value.columns)
    assert list(table["checkpoint"]) == ["checkpoint-2", "checkpoint-4"]
    assert at.button(key="ck_run") and "workbench score" in at.code[0].value
    run = world.parent
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(run))
    at = page("checkpoints", world, tmp_path / "ws2")
    at.run()
    at.radio(key="ck_source").set_value("Local folders").run()
    at.text_input(key="ck_base").input(str(run / "Qwen2.5-VL-tiny")).run()
    at.text_input(key="ck_series").input(str(run / "output")).run()
    at.radio(key="ck_data_kind").set_value("A JSONL file").run()
    at.text_input(key="ck_data").input(str(run / "data" / "test.jsonl")).run()
    assert not at.exception and not at.error
    assert any("8 trajectories" in c.value for c in at.caption)
    at.text_input(key="ck_world_name").input("xray run").run()
    at.button(key="ck_world_create").click().run()
    assert not at.exception and not at.error
    from core.workspace.world import load_world

    created = load_world(tmp_path / "ws2" / "worlds" / "xray-run")
    assert created.is_vl and [c.name for c in created.checkpoints] == ["checkpoint-2", "checkpoint-4"]


def test_checkpoints_page_offers_the_pixel_limits_of_a_vl_base_only(vl, sample_world, tmp_path):
    world, ws, _ = vl
    at = page("checkpoints", world, ws)
    at.run()
    at.number_input(key="ck_max_pixels").set_value(112 * 112).run()
    assert not at.exception and not at.error
    assert '"max_pixels": 12544' in at.code[0].value and '"min_pixels": null' in at.code[0].value
    at = page("checkpoints", sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception and not [n for n in at.number_input if n.key == "ck_max_pixels"]


def test_home_describes_a_vl_world(vl):
    from core.workspace.world import load_world

    world, ws, _ = vl
    summary = load_world(world).summary()
    assert summary["model"]["vision"] and summary["model"]["layers"] == 2 and summary["tokenizer"]["vocab_size"] > 300
    assert summary["model"]["hidden_size"] == 64
    at = page("home", world, ws)
    at.run()
    assert not at.exception and at.subheader[0].value == "Tiny X-ray world"
