"""AppTests of the Watch page: a watched run's figures, alarms and their link to the explorer, Stop, Open as a world."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from core.watch import views
from tests.conftest import ROOT
from tests.watch_run import make_watch
from workbench import state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def watched(quick_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("watched")
    return make_watch(quick_world, root)


def page(world, ws) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "watch.py"), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(ws)
    return at


def test_without_a_watch_the_page_says_how_to_start_one(quick_world, tmp_path):
    at = page(quick_world, tmp_path / "ws")
    at.run()
    assert not at.exception and "workbench watch plugin" in at.code[0].value


def test_a_running_watch_shows_its_figures_alarms_and_stop(quick_world, watched, tmp_path):
    ws = tmp_path / "ws"
    views.register(ws, watched)
    at = page(quick_world, ws)
    at.run()
    assert not at.exception
    facts = {m.label: m.value for m in at.metric}
    assert facts["Trainer"] == "running" and facts["Scored"] == "2 steps" and facts["Lag"] == "0 queued"
    assert len(at.get("plotly_chart")) == 1
    alarms = views.WatchView.open(watched).alarms
    assert len([b for b in at.button if b.key and b.key.startswith("alarm-open-")]) == len(alarms)
    at.button(key="watch_stop").click().run()
    assert json.loads((watched / "stop.json").read_text())["by"] == "the Watch page"
    assert any("Stop asked" in i.value for i in at.info)
    (watched / "stop.json").unlink()


def test_an_alarm_opens_the_explorer_on_its_trajectories(quick_world, watched, tmp_path):
    ws = tmp_path / "ws"
    views.register(ws, watched)
    alarms = views.WatchView.open(watched).alarms
    if not alarms:
        pytest.skip("this random run raised no alarm")  # its adapters are random: malformed answers raise one
    at = page(quick_world, ws)
    at.run()
    at.button(key="alarm-open-0").click().run()
    assert not at.exception
    assert at.session_state[state.ANALYSIS] == str(watched / "analysis")
    assert at.session_state[state.DRIVER_IDS] == alarms[-1]["evidence"]["trajectories"]
    assert at.session_state[state.EXPLORER_VIEW] == "Trajectory"


def test_a_finished_watch_becomes_a_world(quick_world, tmp_path):
    ws = tmp_path / "ws"
    watch = make_watch(quick_world, tmp_path / "done", status="ended", steps=(2,))
    views.register(ws, watch)
    trainer = json.loads((watch / "trainer.json").read_text())
    (watch / "trainer.json").write_text(json.dumps({**trainer, "status": "stopped",
                                                    "stop_reason": "stop asked (the Watch page)"}))
    at = page(quick_world, ws)
    at.run()
    assert any("Training stopped at step 2: stop asked (the Watch page)" in i.value for i in at.info)
    at.text_input(key=state.WATCH_WORLD_NAME).set_value("watched-world").run()
    at.button(key="watch_world").click().run()
    assert not at.exception and any("World watched-world created" in s.value for s in at.success)
    assert (ws / "worlds" / "watched-world" / "analysis" / "config.json").is_file()
    assert at.session_state[state.NEXT_WORLD] == str(ws / "worlds" / "watched-world")


def _reporting(job, timeout: float = 180.0):
    """Wait until the scorer job reports (its cancel flag is set up by then: a SIGTERM earlier kills it)."""
    import time

    from core.jobs.supervisor import STARTING

    deadline = time.monotonic() + timeout
    while job.progress()["message"] == STARTING:
        assert job.state() == "running" and time.monotonic() < deadline, job.log_tail()
        time.sleep(0.1)
    return job


def _job_of(ws, watch):
    from core.jobs import supervisor

    found = [j for j in supervisor.list_jobs(ws / "jobs", "watch") if j.meta.get("out") == str(watch.resolve())]
    assert len(found) == 1, found
    return found[0]


def test_the_scorer_starts_as_a_job_with_its_saved_settings_and_cancels_from_the_page(quick_world, tmp_path):
    ws = tmp_path / "ws"
    watch = make_watch(quick_world, tmp_path / "resume", status="running", steps=(2,))
    views.register(ws, watch)
    at = page(quick_world, ws)
    at.run()
    assert any("Resumes at the first unscored step" in c.value for c in at.caption)
    at.button(key="watch_start_scorer").click().run()
    assert not at.exception
    job = _job_of(ws, watch)
    assert job.kind == "watch" and job.argv[:3] == ["-m", "core.jobs.worker", "watch"]
    saved = json.loads((job.dir / "config.json").read_text())
    assert saved["limit"] == 4 and saved["positions"] == "sentence" and saved["once"] is False
    assert "waiting for the next checkpoint" in _reporting(job).progress()["message"]
    at.run()
    at.button(key=f"cancel-{job.id}").click().run()  # the jobs panel's Cancel: SIGTERM to the worker
    assert job.wait(120) == "cancelled", job.log_tail()
    assert views.WatchView.open(watch).scorer_state == "cancelled"


def test_a_new_watch_is_scored_on_the_open_worlds_probe_set(quick_world, tmp_path):
    from core.watch import callback

    ws = tmp_path / "ws"
    scored = make_watch(quick_world, tmp_path / "src", status="ended", steps=(2,))
    watch = callback.init_watch(tmp_path / "fresh" / "watch", keep="adapters", source="callback")
    callback.record(scored.parent / "run" / "checkpoint-2", watch, 2)  # recorded, never scored
    views.register(ws, watch)
    at = page(quick_world, ws)
    at.run()
    assert not at.exception and any("the world" in c.value for c in at.caption)
    at.number_input(key=state.setting("watch", "limit")).set_value(3).run()
    at.button(key="watch_start_scorer").click().run()
    assert not at.exception
    job = _job_of(ws, watch)
    saved = json.loads((job.dir / "config.json").read_text())
    assert saved["world"] == str(quick_world) and saved["limit"] == 3 and saved["run"] == str(watch)
    assert _reporting(job).cancel() and job.wait(120) == "cancelled", job.log_tail()
