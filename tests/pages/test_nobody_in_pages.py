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


def world_page(name: str, world, workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
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
    at = world_page("checkpoints", sample_world, tmp_path / "ws")
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


def test_runs_page_pair_file_naming_images_outside_the_roots_tells_nothing_and_launches_nothing(sample_world, tmp_path,
                                                                                               monkeypatch):
    """A preference file typed on the CPO runs page lies under the roots, but its images name /etc: each is
    refused the same way (a protected file and a missing one alike), naming the file, line and field, and
    there is no Launch button; the config the page builds carries the roots, so the trainer checks them too."""
    import json

    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    at = world_page("runs", sample_world, tmp_path / "ws")
    at.selectbox(key="run_data").set_value("a TRL preference file").run()
    pairs = tmp_path / "ws" / "pairs.jsonl"  # in the workspace: under the roots
    errors = []
    for image in ("/etc/shadow", "/etc/no-such-image.png"):
        rec = {"prompt": "<image> Disease?", "chosen": "<think>a</think> A.", "rejected": "<think>b</think> B."}
        pairs.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "images": [image]}) + "\n")
        at.text_input(key="run_file").input(str(pairs)).run()
        assert not at.exception
        found = [e.value.replace("\\[", "[").replace("\\]", "]") for e in at.error]  # markdown escapes of inert
        found = [e for e in found if "images[0]" in e]
        assert found, [e.value for e in at.error]
        errors.append(found[0].replace(image, "PATH"))
        assert not [b for b in at.button if b.key == "run_launch"]
    assert errors[0] == errors[1] and "pairs.jsonl, line 2, images[0]: PATH: not under the data roots" in errors[0]
