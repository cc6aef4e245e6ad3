"""AppTests of the Perturbation lab's Image section: on a user's VL world it shows the study's X-ray, runs an
occlusion as a background job and draws its heatmap over the image, and draws image-swap flip rates per
category; on the text sample world there is no Image section."""

import dataclasses
import json
import time
import warnings

import pytest
from streamlit.testing.v1 import AppTest

from core.jobs import supervisor as jobs
from core.perturb import visual, visual_probe
from core.workspace.workspace import Workspace
from core.workspace.world import load_world
from tests.conftest import ROOT
from tests.vl_world import make_vl_world
from workbench import state


@pytest.fixture(scope="module")
def vl_world(tmp_path_factory):
    return load_world(make_vl_world(tmp_path_factory.mktemp("vl-page")))


def page(world_root, workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "perturbation.py"), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(world_root)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    return at


def charts_of(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_no_image_section_on_the_text_world(sample_world, tmp_path):
    at = page(sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception
    assert "Image" not in [h.value for h in at.header] and not at.get("image")
    assert "vis_occlusion_run" not in [b.key for b in at.button]


def test_swap_results_draw_flip_rates_per_category(vl_world, tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    cfg = visual.VisualConfig.from_world(vl_world, kind="swap", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = visual_probe.run(cfg)
    visual.write_result(df, cfg, visual.result_path(visual.results_dir(ws, vl_world), cfg))
    at = page(vl_world.root, ws.root)
    at.run()
    assert not at.exception
    assert [h.value for h in at.header][:1] == ["Image"] and at.get("image")  # the study's X-ray is shown
    assert any("Cost:" in c.value and "swapped images x 3 checkpoints" in c.value for c in at.caption)
    [chart] = [c for c in charts_of(at) if c["data"] and c["data"][0]["type"] == "scatter"]
    assert {t["name"] for t in chart["data"]} == {"Cardiomegaly", "Edema", "Lung Opacity", "Pneumonia"}
    assert chart["layout"]["xaxis"]["title"]["text"] == "checkpoint step"  # values: tests/unit/workbench/test_visual_charts.py
    assert any("\nworkbench visual --config config.json --out " in c.value for c in at.code)  # a shell command

    along = dataclasses.replace(cfg, traj_ids=["study-002"], swap_to=["Pneumonia"], positions="sentence")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = visual_probe.run(along)
    time.sleep(0.05)  # a newer file: the newest result is the one shown
    visual.write_result(df, along, visual.result_path(visual.results_dir(ws, vl_world), along))
    at.run()
    assert not at.exception
    paths = [c for c in charts_of(at) if any("own image" in t.get("name", "") for t in c["data"])]
    assert len(paths) == 1 and len(paths[0]["data"]) == 2 * 3  # own and swapped image x 3 checkpoints
    captions = [i.caption for e in at.get("image") for i in e.proto.imgs]  # the swap drawn: images side by side
    assert any(c.startswith("own image · ") for c in captions), captions
    assert any(c.startswith("image of ") and c.endswith("· Pneumonia") for c in captions), captions


@pytest.mark.slow
def test_occlusion_runs_in_the_background_and_draws_a_heatmap_over_the_image(vl_world, tmp_path):
    at = page(vl_world.root, tmp_path / "ws")
    at.run()
    assert not at.exception
    at.selectbox(key=state.LAB_TRAJECTORY).set_value("study-001").run()  # one study for image and text
    at.selectbox(key="vis_grid").set_value(2).run()
    at.button(key="vis_occlusion_run").click().run()
    assert not at.exception
    ws = Workspace.open(tmp_path / "ws")
    [job] = jobs.list_jobs(ws.job_dirs, "visual")
    cfg = visual.VisualConfig.load(job.dir / "config.json")  # the config the job runs from
    assert (cfg.kind, cfg.traj_ids, cfg.grid) == ("occlusion", ["study-001"], 2)
    assert job.wait(180) == "done", job.log_tail()
    at.run()
    assert not at.exception
    heat = [c for c in charts_of(at) if any(t["type"] == "heatmap" for t in c["data"])]
    assert heat, "no occlusion heatmap drawn"
    types = [t["type"] for t in heat[0]["data"]]
    assert types == ["image", "heatmap", "heatmap", "heatmap"]  # the X-ray, one heatmap per checkpoint
    assert heat[0]["data"][1]["z"]["shape"].replace(" ", "") == "2,2"  # 2 x 2 patches (plotly's typed array)
    assert len(heat[0]["layout"]["sliders"][0]["steps"]) == 3
    assert any("occluded variants x 3 checkpoints" in c.value for c in at.caption)


def test_a_bad_rectangle_is_refused_in_the_page(vl_world, tmp_path):
    at = page(vl_world.root, tmp_path / "ws")
    at.run()
    at.radio(key="vis_cover").set_value("one rectangle").run()
    at.number_input(key="vis_region_x1").set_value(0).run()
    assert not at.exception
    assert any("region" in e.value for e in at.error)
    assert "vis_occlusion_run" not in [b.key for b in at.button]  # nothing to launch
