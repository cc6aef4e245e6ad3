"""The multimodal sample world through the whole loop on the pages, as a speaker demos it (AppTests on a copy of
``sample_data/multimodal`` registered as ``workbench demo`` registers it): the drift explorer opens on the shipped
analysis with the study's X-ray beside its CoT; the Counterfactuals page makes a graph rewrite and an image swap
of a study, stored with their images; Curation accepts them and exports a snapshot with its images copied; the
CPO runs page trains a short run on that snapshot from the drifted checkpoint; the Checkpoints page joins the run
to the series and scores it, and the explorer compares the start with the repaired run."""

import shutil
import time

import pytest
from streamlit.testing.v1 import AppTest

from core.curation import snapshots
from core.workspace.workspace import Workspace
from core.workspace.world import load_world
from tests.conftest import ROOT
from workbench import state
from workbench.demo import SAMPLE_WORLDS


@pytest.fixture
def demo(tmp_path):
    """A copy of the multimodal sample world in a fresh workspace, registered as ``workbench demo`` does."""
    world = shutil.copytree(SAMPLE_WORLDS["multimodal"], tmp_path / "multimodal")
    ws = Workspace.open(tmp_path / "ws")
    w = load_world(world)
    ws.store.register_world(w.name, w.root, w.fingerprint())
    ws.store.close()
    return world, tmp_path / "ws"


def page(name: str, world, workspace, annotator: str | None = None, timeout: int = 120) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=timeout)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    if annotator:
        at.session_state[state.ANNOTATOR] = annotator
    return at


def pictures(at: AppTest) -> int:
    return sum(len(e.value) for e in at.get("image"))


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


def wait_until(at: AppTest, done, timeout: float) -> None:
    """Rerun the page until ``done(at)`` (a background job's panel), as a user watching it would."""
    deadline = time.monotonic() + timeout
    while not done(at):
        assert time.monotonic() < deadline, texts(at)
        time.sleep(1)
        at.run()


def test_explorer_opens_on_the_shipped_analysis_with_the_x_ray(demo):
    world, ws = demo
    at = page("explorer", world, ws)
    at.run()
    assert not at.exception and not at.error
    facts = {m.label: m.value for m in at.metric}
    assert facts["Trajectories"] == "140"  # the shipped analysis: nothing scored
    assert len(at.get("plotly_chart")) >= 2  # the drift overview: summary over steps, accuracy per category
    at.segmented_control[0].set_value("Trajectory").run()
    assert not at.exception and not at.error
    assert pictures(at) == 1  # the study's film beside its CoT
    assert at.get("image")[0].captions[0] == at.selectbox(key="explorer_trajectory").value
    assert len(at.get("plotly_chart")) == 2  # the token heatmap and the belief lines


def counterfactuals_to_snapshot(world, ws) -> snapshots.Snapshot:
    """Counterfactuals page: a graph rewrite and an image swap of the first study toward Edema; Curation: both
    accepted, exported as a TRL snapshot with the images copied. Returns the snapshot."""
    cf = page("counterfactuals", world, ws)
    cf.run()
    assert not cf.exception and pictures(cf) == 1  # the chosen study's film
    cf.selectbox(key="cf_target").set_value("Edema").run()
    cf.button(key="cf_generate").click().run()  # graph rules (the default method)
    assert not cf.exception and not cf.error
    cf.radio(key="cf_method").set_value("image_swap").run()
    cf.button(key="cf_generate").click().run()
    assert not cf.exception and not cf.error
    assert pictures(cf) == 3  # the study, then the original and the swapped-in film side by side
    table = cf.dataframe[0].value
    assert set(table["method"]) == {"graph", "image_swap"}
    swap = table[table["method"] == "image_swap"].iloc[0]
    assert swap["counterfactual"] == swap["original"] and swap["images"].endswith(".jpg")

    cur = page("curation", world, ws, annotator="ada")
    cur.run()
    assert not cur.exception and pictures(cur) == 1  # item 1, the graph rewrite: the study's film
    cur.button(key="cur_accept").click().run()
    assert not cur.exception and pictures(cur) == 2  # item 2, the image swap: both films
    cur.button(key="cur_accept").click().run()
    assert any("Nothing left for you" in i.value for i in cur.info)
    cur.checkbox(key="cur_export_copy_images").check()
    cur.text_input(key="cur_export_name").input("mm-demo")
    cur.button(key="cur_export").click().run()
    assert not cur.exception and "2 pairs" in cur.success[0].value
    (snap,) = snapshots.snapshots(Workspace.open(ws).store)
    assert len(list((snap.path / "images").iterdir())) == 2  # the study's film and the swapped-in one
    return snap


def test_counterfactuals_with_images_are_curated_into_a_snapshot(demo):
    world, ws = demo
    snap = counterfactuals_to_snapshot(world, ws)
    assert snap.image_changes() == []


@pytest.mark.slow  # a real CPO run and scoring job on the tiny Qwen2.5-VL: about 20 s on 2 cores
def test_a_cpo_run_on_the_snapshot_joins_the_series_and_is_compared(demo):
    world, ws = demo
    snap = counterfactuals_to_snapshot(world, ws)
    runs_page = page("runs", world, ws, timeout=300)
    runs_page.run()
    drifted = runs_page.selectbox(key="run_start").value
    assert drifted != "base"  # the world's least accurate checkpoint
    label = f"snapshot: {snap.name} ({snap.row_count} pairs)"
    runs_page.selectbox(key=state.RUN_DATA_WIDGET).set_value(label).run()
    runs_page.number_input(key="run_max_steps").set_value(2)
    runs_page.number_input(key="run_batch_size").set_value(2)
    runs_page.number_input(key="run_eval_limit").set_value(14)
    runs_page.text_input(key=state.RUN_NAME).input("mm-fix").run()
    assert not runs_page.exception and not runs_page.error, [e.value for e in runs_page.error]
    assert any("Pre-flight: 2 pairs" in c.value for c in runs_page.caption)
    runs_page.button(key="run_launch").click().run()
    assert not runs_page.exception
    wait_until(runs_page, lambda at: "mm-fix:" in texts(at) and "mm-fix: running" not in texts(at), 300)
    assert "**mm-fix: done**" in texts(runs_page), [c.value for c in runs_page.code]
    assert any("Rejected side's image" in img.proto.imgs[0].caption for img in runs_page.get("image"))
    assert any("On the held-out sets" in m.value for m in runs_page.markdown)  # evaluated with each study's film
    held = next(d.value for d in runs_page.dataframe if "held_out_limit" in d.value.columns)
    assert list(held["run"])[-1] == "mm-fix" and 0 <= held.iloc[-1]["accuracy"] <= 1
    assert held.iloc[-1]["held_out_limit"] == 14  # a quick look: the first 14 studies, said in the table
    assert held.iloc[0]["run"] == f"before ({drifted}, first 14)"  # its start on the same 14 studies
    assert held.iloc[0]["held-out studies"] == held.iloc[-1]["held-out studies"] and "first 14" in held.iloc[-1]["held-out studies"]

    ck = page("checkpoints", world, ws, timeout=300)
    ck.run()
    ck.multiselect(key="ck_runs").set_value(["mm-fix"]).run()
    assert not ck.exception and not ck.error
    branch = ck.dataframe[0].value.set_index("checkpoint").at["mm-fix", "branch_of"]
    assert branch.startswith(drifted)
    ck.number_input(key="ck_limit").set_value(4).run()
    ck.button(key="ck_run").click().run()
    wait_until(ck, lambda at: "· done ·" in texts(at) or "· failed ·" in texts(at), 300)
    assert "· done ·" in texts(ck), texts(ck)
    out = next(p for p in (ws / "analyses").iterdir() if (p / "config.json").is_file())

    ex = page("explorer", world, ws)
    ex.session_state[state.ANALYSIS] = str(out)
    ex.run()
    assert not ex.exception and ex.selectbox(key="branch_run").value == "mm-fix"
    summary = next(d.value for d in ex.dataframe if "model" in d.value.columns)
    assert summary["model"].tolist() == [f"start: {drifted}", "repaired: mm-fix"]
