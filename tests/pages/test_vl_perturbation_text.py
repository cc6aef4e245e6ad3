"""AppTest of the Perturbation lab's text section on a vision-language world: the trajectory's X-ray is shown
beside its text, and a synonym swap is answered with the image (the probe's figures equal
``core.perturb.text.perturbation_test`` on the series, which reads each record's images)."""

import pytest
from streamlit.testing.v1 import AppTest

from core.drift.analysis import AnalysisConfig, run_analysis
from core.graph import concepts
from core.io.trajectories import read_trajectories
from core.models.series import load_series
from core.perturb import text as perturb
from tests.conftest import ROOT
from tests.vl_world import LABELS, make_vl_world
from workbench import state


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    root = tmp_path_factory.mktemp("vl-lab")
    world = make_vl_world(root / "run")
    ws = root / "ws"
    cfg = AnalysisConfig.from_world(world, batch_size=4, positions="end", labels=LABELS, limit=4)
    out = run_analysis(cfg).save(ws / "analyses" / "test-vl")
    return world, ws, out, cfg


@pytest.mark.slow  # scores the tiny VL world first, then probes under 3 checkpoints: ~10 s on 2 cores
def test_a_synonym_swap_on_an_x_ray_study_is_probed_with_its_image(vl):
    world, ws, out, cfg = vl
    at = AppTest.from_file(str(ROOT / "pages" / "perturbation.py"), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(ws)
    at.session_state[state.ANALYSIS] = str(out)
    at.run()
    assert not at.exception and not at.error
    records = read_trajectories(cfg.data, limit=4)
    study = records[0]  # Pneumonia: "opacity ... consolidation" in its CoT
    at.selectbox(key=state.LAB_TRAJECTORY).set_value(study["id"]).run()
    captions = [c for e in at.get("image") for c in e.captions]
    assert study["id"] in captions  # the study's X-ray beside its text in the text section
    pick = at.selectbox(key="lab_pick")
    surfaces = [o[1] for o in perturb.swaps_in(study, concepts.load_graph(cfg.graph))]
    pick.set_value(surfaces.index("consolidation")).run()
    replace = at.selectbox(key="lab_alt_" + str(surfaces.index("consolidation"))).value
    at.radio(key="lab_mode").set_value("probe").run()
    at.button(key="lab_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = at.dataframe[-1].value
    series = load_series(cfg.base, cfg.checkpoints, device="cpu", vision=cfg.vision)
    expected = perturb.perturbation_test(series, [study], "consolidation", replace, LABELS, mode="probe",
                                         template=cfg.template)
    assert list(shown["checkpoint"]) == list(expected["checkpoint"])
    assert shown["gold_after"].tolist() == pytest.approx(expected["gold_after"].tolist(), abs=1e-5)

