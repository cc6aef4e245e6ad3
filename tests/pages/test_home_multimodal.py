"""AppTest: the Home page on the multimodal sample world (films beside the facts, the drift it recorded) and the
pointer to the other sample world."""

from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from workbench import state
from workbench.demo import SAMPLE_WORLDS


def _home(world, tmp_path) -> AppTest:
    """Home on ``world`` in a workspace where both sample worlds are registered, as ``workbench demo`` does."""
    from core.workspace.workspace import Workspace
    from workbench.cli import _register_samples

    ws = Workspace.open(tmp_path / "ws")
    _register_samples(ws)
    ws.store.close()
    at = AppTest.from_file(str(ROOT / "pages" / "home.py"), default_timeout=60)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(tmp_path / "ws")
    return at


def test_home_on_the_multimodal_world_shows_its_films_and_drift(tmp_path):
    at = _home(SAMPLE_WORLDS["multimodal"], tmp_path)
    at.run()
    assert not at.exception and not at.warning
    labels = {m.label: m.value for m in at.metric}
    assert labels["Base model"] == "0.44 M" and [m.delta for m in at.metric if m.label == "Base model"] == ["Qwen2_5_VL"]
    assert int(labels["Checkpoints"]) >= 4
    assert len(at.get("image")) == 4  # four held-out films, each captioned with its label
    table = at.dataframe[0].value
    assert "image_belief_lung_opacity" in table.columns and table["checkpoint"].iloc[0] == "base (SFT)"
    assert any("`sample_data`" in i.value and "World" in i.value for i in at.info)  # how to reach the other world


def test_home_on_the_text_world_points_to_the_multimodal_one(tmp_path):
    at = _home(SAMPLE_WORLDS["text"], tmp_path)
    at.run()
    assert not at.exception
    assert any("`multimodal`" in i.value and "World" in i.value for i in at.info)
