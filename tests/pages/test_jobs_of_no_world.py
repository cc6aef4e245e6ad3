"""Jobs started before jobs recorded their world (issue 24): a world's jobs panel lists them apart, under "Jobs of no
recorded world", instead of hiding them; another world's jobs stay out."""

import json

from streamlit.testing.v1 import AppTest

from core.jobs import supervisor as jobs
from tests.conftest import ROOT
from workbench import state
from workbench.demo import SAMPLE_WORLDS

WORLD = str(SAMPLE_WORLDS["text"].resolve())  # the world the page opens by default


def _job(jobs_dir, name: str, meta: dict, started: float) -> None:
    """A finished counterfactual batch's folder, as the supervisor leaves it (``meta`` without a world: as jobs
    started before issue 24 recorded theirs)."""
    folder = jobs_dir / name
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"kind": "counterfactuals", "title": name, "argv": [],
                                                 "started_at": started, "pid": None, "meta": meta}))
    (folder / "progress.json").write_text(json.dumps({"done": 0.5, "message": f"{name}: 2 of 4 trajectories"}))
    (folder / "exit.json").write_text(json.dumps({"returncode": 130, "ended_at": started + 3}))


def test_the_jobs_of_no_recorded_world_are_listed_apart(tmp_path):
    ws = tmp_path / "ws"
    _job(ws / "jobs", "batch-of-this-world", {"world": WORLD}, 1.0)
    _job(ws / "jobs", "batch-of-another-world", {"world": str(tmp_path / "swift-run")}, 2.0)
    _job(ws / "jobs", "batch-before-worlds", {}, 3.0)
    assert [j.id for j in jobs.list_jobs(ws / "jobs", unrecorded=True)] == ["batch-before-worlds"]
    at = AppTest.from_file(str(ROOT / "pages" / "counterfactuals.py"), default_timeout=120)
    at.session_state[state.WORKSPACE_PATH] = str(ws)
    at.run()
    assert not at.exception
    old = [e for e in at.expander if e.label.startswith("Jobs of no recorded world (1)")]
    assert len(old) == 1
    inside = " ".join(m.value for m in old[0].markdown)
    assert "batch-before-worlds" in inside and "cancelled · 3 s" in inside
    assert any("batch-before-worlds: 2 of 4 trajectories" in c.value for c in old[0].caption)
    shown = " ".join(m.value for m in at.markdown)
    assert "batch-of-this-world" in shown and "batch-of-another-world" not in shown
