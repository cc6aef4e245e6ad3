"""Pages refuse typed paths outside the data roots with one message, and render user text inertly."""

from streamlit.testing.v1 import AppTest

from core.curation import queue as curation
from core.workspace.workspace import Workspace
from tests.conftest import ROOT
from workbench import state


def curation_page(workspace, annotator: str = "ada") -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "curation.py"), default_timeout=60)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    at.session_state[state.ANNOTATOR] = annotator
    return at.run()


def test_curation_import_path_outside_the_roots_tells_nothing_about_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    at = curation_page(tmp_path / "ws")
    errors = []
    for path in ("/etc/passwd", "/etc/no-such-file"):
        at.text_input(key="cur_import_path").input(path)
        at.button(key="cur_import").click().run()
        assert not at.exception
        errors.append(at.error[0].value.replace(path, "PATH"))
    assert errors[0] == errors[1] and "not under the data roots" in errors[0]
    assert "root:" not in errors[0]


def test_checkpoints_typed_paths_outside_the_roots_are_refused(sample_world, tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    at = AppTest.from_file(str(ROOT / "pages" / "checkpoints.py"), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(sample_world)
    at.session_state[state.WORKSPACE_PATH] = str(tmp_path / "ws")
    at.run()
    at.radio(key="ck_source").set_value("Local folders").run()
    at.text_input(key="ck_base").input("/usr").run()
    at.text_input(key="ck_series").input(str(sample_world / "rft")).run()
    assert not at.exception
    assert any("/usr: not under the data roots" in e.value for e in at.error)
    at.text_input(key="ck_base").input(str(sample_world / "model")).run()
    at.radio(key="ck_data_kind").set_value("A JSONL file").run()
    at.text_input(key="ck_data").input("/etc/passwd").run()
    assert not at.exception
    assert any("/etc/passwd: not under the data roots" in e.value for e in at.error)
    assert not any("root:" in c.value for c in at.caption)


def test_guidelines_and_names_render_without_images(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    curation.save_guidelines(ws.store, "# Rules\n![](http://evil.example/x.png) [here](http://evil.example)", "eve")
    at = curation_page(tmp_path / "ws", annotator="![](http://evil.example/n.png)")
    assert not at.exception
    shown = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert any("evil.example/x.png" in v for v in shown)
    assert not any("![](http" in v or "](http://" in v for v in shown), shown
