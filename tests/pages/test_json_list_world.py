"""A vision-language run whose data is an ms-swift JSON list (not JSONL), as researchers keep it (issue 24):
Home shows its example studies and the visual jobs (the Perturbation lab's image section) read it: one trajectory
reader everywhere (``core.io.trajectories.raw_records``)."""

import json

from streamlit.testing.v1 import AppTest

from core.io.vl_records import read_vl_records
from tests.conftest import ROOT
from tests.vl_world import make_vl_world
from workbench import state


def json_list_world(tmp_path):
    """The tiny VL world with its dataset rewritten as one JSON list beside the JSONL (same relative images)."""
    world = make_vl_world(tmp_path / "vl")
    manifest = json.loads((world / "world.json").read_text())
    jsonl = world / manifest["datasets"]["test"]["path"]
    listed = jsonl.with_suffix(".json")
    listed.write_text(json.dumps([json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()], indent=1))
    manifest["datasets"]["test"]["path"] = str(listed)
    (world / "world.json").write_text(json.dumps(manifest))
    return world, listed


def page(name, world, workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    return at.run()


def test_home_and_the_image_section_read_a_json_list(tmp_path):
    world, listed = json_list_world(tmp_path)
    records = read_vl_records(listed)
    assert len(records) == 8 and records[0]["where"].endswith("item 0") and records[0]["image_refs"]
    home = page("home.py", world, tmp_path / "ws")
    assert not home.exception and not home.warning and len(home.get("image")) == 4
    from core.perturb import visual

    cfg = visual.VisualConfig(base=str(world / "unused"), data=str(listed), kind="swap", traj_ids=["study-003"])
    assert [r["id"] for r in visual.read_records(cfg)] == ["study-003"]  # what a visual job reads: the JSON list
