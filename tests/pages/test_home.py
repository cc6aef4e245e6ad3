"""AppTest for the Home page and the entry file's routing."""

from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from workbench import state


def test_home_shows_the_world_at_a_glance(sample_world):
    at = AppTest.from_file(str(ROOT / "pages" / "home.py"), default_timeout=60)
    at.session_state[state.WORLD_PATH] = str(sample_world)
    at.run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Base model"] == "0.80 M" and [m.delta for m in at.metric if m.label == "Base model"] == ["Llama"]
    assert int(labels["Checkpoints"]) >= 5
    assert int(labels["Concept graph"]) == 44
    assert any("drift" in md.value.lower() for md in at.markdown)
    assert len(at.dataframe) == 3  # drift table, checkpoint series, datasets
    links = " ".join(str(p.proto) for p in at.get("page_link"))
    assert 'label: "CPO runs"' in links and 'label: "Curation"' in links  # the loop's links reach the CPO runs
    assert any("greedy decoding" in c.value for c in at.caption)  # which accuracy the table holds


def test_home_on_a_broken_world_shows_a_clear_error_not_a_traceback(tmp_path):
    at = AppTest.from_file(str(ROOT / "pages" / "home.py"), default_timeout=60)
    at.session_state[state.WORLD_PATH] = str(tmp_path / "nowhere")
    at.run()
    assert not at.exception
    assert "world folder not found" in at.error[0].value


def test_entry_file_routes_to_home(sample_world, monkeypatch):
    monkeypatch.setenv("WORKBENCH_WORLD", str(sample_world))
    at = AppTest.from_file(str(ROOT / "workbench" / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert at.title[0].value == "CoT Drift Workbench"
