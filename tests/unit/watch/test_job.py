"""The scorer is job kind ``watch`` of the one job registry: started by ``launch``, run by ``python -m
core.jobs.worker watch``, reporting progress, cancelled keeping every step scored, resumed to the end; the
``workbench watch`` command runs the same kind (its flags from ``WatchConfig``)."""

from __future__ import annotations

import json
import time

import pytest

from core.jobs import registry
from core.watch import scorer
from core.watch.config import WatchConfig
from core.watch.job import launch
from core.watch.views import WatchView, list_watches
from core.workspace.workspace import Workspace
from workbench import cli

pytestmark = pytest.mark.slow


def test_the_watch_kind_is_in_the_registry():
    kind = registry.get("watch")
    assert kind.config_class() is WatchConfig and kind.run_function().__name__ == "run_watch"


def test_a_watch_job_reports_cancels_keeping_its_steps_and_resumes(recorded, quick_world, tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    cfg = WatchConfig(run=str(recorded), world=str(quick_world), limit=4, batch_size=2, decode=0, once=True)
    job = launch(ws, cfg)
    assert job.kind == "watch" and job.argv[:3] == ["-m", "core.jobs.worker", "watch"]
    assert list_watches(ws.root) == [recorded.resolve()]  # listed on the Watch page
    deadline = time.monotonic() + 300
    while not (recorded / "steps" / "checkpoint-2" / "step.json").is_file():
        assert job.state() == "running" and time.monotonic() < deadline, job.log_tail()
        time.sleep(0.05)
    p = job.progress()
    assert 0 < p["done"] < 1 and "checkpoint-" in p["message"], p
    assert job.cancel() and job.wait(120) == "cancelled", job.log_tail()
    view = WatchView.open(recorded)
    assert view.scorer_state == "cancelled" and view.scorer_jobs(ws.jobs_dir)[0].id == job.id
    kept = {s["checkpoint"]: s for s in view.steps}
    assert "checkpoint-2" in kept and view.needs_scorer  # steps wait unscored: the page offers to start it again

    again = registry.relaunch(ws, job)  # the page's or a shell's resume: the same config, a new job folder
    assert again.wait(300) == "done", again.log_tail()
    after = WatchView.open(recorded)
    assert [s["checkpoint"] for s in after.steps] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert all(s["scored_at"] == kept[s["checkpoint"]]["scored_at"] for s in after.steps if s["checkpoint"] in kept)
    assert "workbench: watch scored" in again.log_tail(40) and not after.needs_scorer


def test_the_command_runs_the_same_kind_and_writes_the_plugin(recorded, quick_world, tmp_path, capsys):
    code = cli.main(["watch", "--run", str(recorded), "--world", str(quick_world), "--limit", "4", "--batch-size", "2",
                     "--decode", "0", "--once", "--workspace", str(tmp_path / "ws")])
    assert code == 0, capsys.readouterr().err
    assert "watch scored 3 step(s)" in capsys.readouterr().out
    assert json.loads((recorded / "config.json").read_text())["limit"] == 4  # the settings it ran with, kept
    assert (recorded / "analysis" / "config.json").is_file() and scorer.read_alarms(recorded) is not None
    assert cli.main(["watch", "plugin", "--out", str(tmp_path / "cot_drift_watch.py")]) == 0
    assert "class DriftWatchCallback" in (tmp_path / "cot_drift_watch.py").read_text()
    assert cli.main(["watch", "--limit", "4"]) == 2
    assert "missing --run" in capsys.readouterr().err
