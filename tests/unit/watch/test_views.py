"""A watch read for the page (lag, steps, the trainer's log, Stop) and a finished watch turned into a world."""

from __future__ import annotations

import json

import pytest

from core.drift.analysis import AnalysisView
from core.errors import InputError
from core.watch import scorer, views
from core.watch.config import WatchConfig

pytestmark = pytest.mark.slow


def test_a_watch_as_the_page_reads_it_then_as_a_world(recorded, quick_world, tmp_path):
    ws = tmp_path / "ws"
    views.register(ws, recorded)
    assert views.list_watches(ws) == [recorded.resolve()] and views.watch_analyses(ws) == []
    (recorded / "trainer.json").write_text(json.dumps({"status": "running", "global_step": 7, "max_steps": 10,
                                                       "log_history": [{"step": 1, "loss": 2.0, "reward": 0.1},
                                                                       {"step": 2, "loss": 1.5, "reward": 0.3}]}))
    view = views.WatchView.open(recorded)
    assert view.live and view.has_callback and not view.finished and view.scorer_state == "not started"
    lag = view.lag()
    assert (lag["queued"], lag["trainer_step"], lag["scored_step"]) == (3, 7, None) and lag["seconds"] >= 0
    assert view.log_history()["reward"].tolist() == [0.1, 0.3]
    view.stop("a test")
    assert json.loads((recorded / "stop.json").read_text())["by"] == "a test"
    with pytest.raises(InputError, match="no analysis yet"):
        views.open_as_world(recorded, ws, "too-early")

    scorer.run(WatchConfig(run=str(recorded), world=str(quick_world), limit=4, batch_size=4, decode=0, once=True,
                           positions="end"))
    (recorded / "trainer.json").write_text(json.dumps({"status": "stopped", "global_step": 7, "log_history": []}))
    view = views.WatchView.open(recorded)
    assert view.finished and view.scorer_state == "done" and view.lag()["queued"] == 0 and len(view.steps) == 3
    assert [r["checkpoint"] for r in view.recorded()] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert views.watch_analyses(ws) == [recorded.resolve() / "analysis"]  # the explorer's picker offers it

    world = views.open_as_world(recorded, ws, "my watched run")
    assert world.root == ws / "worlds" / "my-watched-run" and world.manifest["watch"] == str(recorded.resolve())
    assert [c.name for c in world.checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert world.analysis_dir is not None
    a = AnalysisView.open(world.analysis_dir)
    assert a.summary["checkpoint"].tolist() == ["base", "checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert len(world.summary()["checkpoints"]) == 3 and list(world.manifest["datasets"]) == ["probe"]
    with pytest.raises(InputError, match="already exists"):
        views.open_as_world(recorded, ws, "my watched run")  # nothing is overwritten
