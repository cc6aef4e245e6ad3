"""AppTests of "See the image" (issue 16) on the counterfactual preview and the curation item: a vision-language
world's study shows its X-ray beside the text (an image swap: original and counterfactual image side by side),
a text world shows none, and the curation keyboard flow is unchanged."""

import pytest
from streamlit.testing.v1 import AppTest

from core.counterfactuals.rewrite import make_counterfactuals, with_images
from core.counterfactuals.store import store_counterfactuals
from core.curation import snapshots
from core.graph.store import GraphStore
from core.io.trajectories import read_trajectories
from core.workspace.workspace import Workspace
from core.workspace.world import load_world
from tests.conftest import ROOT
from workbench.demo import SAMPLE_WORLDS
from tests.curation_data import write_ccf
from tests.vl_world import make_vl_world
from workbench import state


@pytest.fixture(scope="module")
def vl_world(tmp_path_factory):
    return make_vl_world(tmp_path_factory.mktemp("vl"))


def page(name: str, workspace, world=None, annotator: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=120)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    if world is not None:
        at.session_state[state.WORLD_PATH] = str(world)
    if annotator is not None:
        at.session_state[state.ANNOTATOR] = annotator
    return at.run()


def pictures(at: AppTest) -> list:
    return at.get("image")


def generate_like_the_page(ws: Workspace, world_root) -> None:
    """What the Counterfactuals page's Generate does, for one study: a graph rewrite and an image swap."""
    world = load_world(world_root)
    data = world.dataset_path("test")
    records = with_images(read_trajectories(data), data)
    gs = GraphStore.open(ws.store, world.graph_path)
    graph, rec = gs.graph(gs.head()), records[0]
    cfs = make_counterfactuals(graph, rec, ["Edema"], "graph", gs.head())
    cfs += make_counterfactuals(graph, rec, ["Edema"], "image_swap", gs.head(), donors=records)
    store_counterfactuals(ws.store, rec, f"{world.name}:test", cfs, world.key)


def test_the_curation_item_shows_the_study_and_an_image_swap_side_by_side(tmp_path, vl_world):
    ws = Workspace.open(tmp_path / "ws")
    generate_like_the_page(ws, vl_world)
    at = page("curation.py", tmp_path / "ws", vl_world, annotator="ada")  # the world whose items they are
    assert not at.exception and not at.warning
    assert len(pictures(at)) == 1  # item 1, the graph rewrite: the study's X-ray beside the pair
    at.button(key="cur_accept").click().run()  # the keyboard flow (A) is the same buttons
    assert not at.exception
    assert len(pictures(at)) == 2  # item 2, the image swap: original and swapped-in X-ray
    captions = [c for img in pictures(at) for c in img.captions]
    assert any("Original image · Pneumonia" in c for c in captions)
    assert any("Counterfactual image · Edema" in c for c in captions)
    at.button(key="cur_reject").click().run()
    assert any("Nothing left for you" in i.value for i in at.info)
    at.checkbox(key="cur_export_copy_images").check()
    at.button(key="cur_export").click().run()
    assert not at.exception and "1 pairs" in at.success[0].value
    snap = snapshots.snapshots(ws.store)[0]
    assert len(list((snap.path / "images").iterdir())) == 1 and snap.image_changes() == []
    at.button(key="cur_check_images").click().run()
    assert "as they were exported" in at.success[-1].value
    next(iter((snap.path / "images").iterdir())).write_bytes(b"another image")  # changed under the same name
    at.button(key="cur_check_images").click().run()
    assert f"Snapshot {snap.name}" in at.warning[0].value and "image changed since the snapshot" in at.warning[0].value


def test_a_text_worlds_curation_item_shows_no_image(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    snapshots.import_file(ws.store, write_ccf(tmp_path / "ccf.json", n=2), world=str(SAMPLE_WORLDS["text"].resolve()))
    at = page("curation.py", tmp_path / "ws", annotator="ada")
    assert not at.exception and at.get("html") and not pictures(at)


def test_the_counterfactual_preview_shows_the_images(tmp_path, vl_world):
    at = page("counterfactuals.py", tmp_path / "ws", vl_world)
    assert not at.exception and len(pictures(at)) == 1  # the chosen study's X-ray beside its text
    at.radio(key="cf_mode").set_value("all").run()
    at.button(key="cf_generate").click().run()  # graph rules
    assert not at.exception and not at.error
    assert len(pictures(at)) == 2  # the study above, and beside the preview
    at.radio(key="cf_method").set_value("image_swap").run()
    at.button(key="cf_generate").click().run()
    assert not at.exception and not at.error
    assert len(pictures(at)) == 3  # the study, then the original and the swapped-in image side by side
    # study-006 (Edema) shows study-000's own X-ray: not a swap
    assert any(c.value.startswith("Studies to take an image from: Cardiomegaly 2, Lung Opacity 2, Edema 1 · none for")
               for c in at.caption)
    table = at.dataframe[0].value
    assert set(table["method"]) == {"graph", "image_swap"}
    swaps = table[table["method"] == "image_swap"]
    assert (swaps["counterfactual"] == swaps["original"]).all() and swaps["images"].str.endswith(".jpg").all()
    assert set(swaps["images"]) != set(table[table["method"] == "graph"]["images"])  # another study's X-ray


def test_a_text_world_offers_no_image_swap(tmp_path):
    at = page("counterfactuals.py", tmp_path)
    assert not at.exception and "image_swap" not in at.radio(key="cf_method").options and not pictures(at)


def test_ccf_items_import_with_their_image_folder_on_the_page(tmp_path, vl_world, monkeypatch):
    import json

    images = vl_world.parent / "MIMIC-CXR"  # mimic-cxr-00N/images/dicom-NNN.jpg
    items = [{"dicom_id": f"dicom-00{i}", "report": "The heart is enlarged.", "diagnose": "Cardiomegaly",
              "counterfact": {"Edema": "There is interstitial edema."}} for i in range(2)]
    (tmp_path / "ccf.json").write_text(json.dumps(items))
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))  # the images' folder is not a data root yet
    at = page("curation.py", tmp_path / "ws", annotator="ada")
    at.text_input(key="cur_import_path").input(str(tmp_path / "ccf.json"))
    at.text_input(key="cur_import_images").input(str(images))
    at.button(key="cur_import").click().run()
    assert "not under the data roots" in at.error[0].value and not pictures(at)
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", f"{tmp_path}:{vl_world.parent}")
    at.button(key="cur_import").click().run()
    assert not at.exception and "kept 2 pairs" in at.success[0].value
    assert len(pictures(at)) == 1 and "Study · Cardiomegaly" in pictures(at)[0].captions[0]
