"""A run watched live in real Chromium: ``workbench demo --watch`` (TRL's GRPOTrainer on the sample world's shifting
stream, the callback and the scorer as background jobs), the alarm on the Watch page, Stop, *Open as a world*, the
Drift explorer on that world."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.conftest import stop, wait_http
from tests.browser.test_loop_browser import idle, no_exception
from tests.conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]
# a short run that drifts fast (the talk's default is 48 steps at lr 2e-3): an alarm within a few saves
RUN = {"steps": 16, "lr": 5e-3, "max_shift_share": 1.0, "save_steps": 2, "probe_studies": 12}
RULE = re.compile(r"Step \d+ · (belief_fall|detrimental_rise|concept_surge|entropy_collapse|kl_jump|malformed)")


@pytest.fixture
def watch_server(free_port, tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    cmd = [sys.executable, "-m", "workbench.cli", "demo", "--watch", "--watch-config", str(tmp_path / "run.json"),
           "--headless", "--port", str(free_port), "--workspace", str(tmp_path / "ws")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "WORKBENCH_DATA_ROOTS": str(tmp_path)})
    url = f"http://127.0.0.1:{free_port}"
    try:
        wait_http(url + "/_stcore/health", proc)
        yield url, tmp_path / "ws"
    finally:
        stop(proc)
        from core.jobs import supervisor as jobs

        for job in jobs.list_jobs(tmp_path / "ws" / "jobs"):  # the demo's trainer and scorer, if still running
            job.cancel()


def test_a_run_watched_live_alarm_stop_world_explorer(browser, watch_server, artifacts):
    url, ws = watch_server
    page = browser.new_page(viewport={"width": 1500, "height": 1300})
    page.goto(url + "/watch")
    page.get_by_role("heading", name="Watch").first.wait_for(timeout=90_000)
    page.get_by_text("Watched run").wait_for(timeout=60_000)
    page.get_by_text(re.compile(r"watch demo-[0-9-]+ · running")).wait_for(timeout=120_000)  # the scorer's job
    page.get_by_text(RULE).first.wait_for(timeout=600_000)  # the live panel redraws every second
    no_exception(page)
    page.screenshot(path=str(artifacts / "watch-alarm.png"), full_page=True)
    stop_button = page.get_by_role("button", name="Stop training")
    clicked = stop_button.count() > 0  # the run may have ended by itself on a slow machine
    if clicked:
        try:
            stop_button.click(timeout=20_000)
        except PlaywrightTimeout:  # gone between the count and the click: the run ended by itself
            clicked = False
    if clicked:
        # the asked stop shows until the trainer's next step, then why it stopped; a run that ended on its own
        # between the count and the click shows neither, only the world button below
        said = page.get_by_text(re.compile(r"Stop asked|Training stopped at step"))
        said.or_(page.get_by_role("button", name="Open as a world")).first.wait_for(timeout=120_000)
    world_button = page.get_by_role("button", name="Open as a world")
    world_button.wait_for(timeout=600_000)  # the trainer has ended, the scorer has emptied its queue
    trainer = json.loads(next((ws / "watches").glob("demo-*/trainer.json")).read_text())
    if clicked and trainer["global_step"] < RUN["steps"]:  # Stop ended it at the next step
        assert trainer["status"] == "stopped" and trainer["stop_reason"] == "stop asked (the Watch page)"
    else:
        assert trainer["status"] in ("stopped", "ended")
    world_button.click()
    page.get_by_text(re.compile(r"World demo-.* created")).wait_for(timeout=60_000)
    no_exception(page)
    page.get_by_role("link", name="Open the Drift explorer").click()
    page.get_by_role("heading", name="Drift explorer").first.wait_for(timeout=60_000)
    idle(page)
    page.get_by_text("Across the checkpoints", exact=True).wait_for(timeout=60_000)
    no_exception(page)
    assert page.locator("[data-testid='stMetricValue']").first.inner_text() == str(RUN["probe_studies"])
    page.screenshot(path=str(artifacts / "watch-world-explorer.png"), full_page=True)
