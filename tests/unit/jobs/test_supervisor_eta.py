"""The ETA of a background job comes from the rate after the first batch, not from the start-up."""

import json

from core.jobs.supervisor import eta_seconds
from core.progress import report_progress


def test_eta_leaves_out_the_start_up():
    # 60 s of start-up, the first batch reported 10% at t=100, 20% at t=110: 10% per 10 s -> 80 s left
    assert eta_seconds({"done": 0.2, "first_time": 100.0, "first_done": 0.1}, 110.0) == 80.0
    assert eta_seconds({"done": 0.1, "first_time": 100.0, "first_done": 0.1}, 100.0) is None  # one batch: no rate yet
    assert eta_seconds({"done": 0.0}, 5.0) is None and eta_seconds({"done": 1.0, "first_time": 1, "first_done": .1}, 9) is None
    assert eta_seconds({"done": 0.5}, 50.0) is None  # an old progress.json without the anchor


def test_a_worker_report_keeps_the_first_batch_as_anchor(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    monkeypatch.setenv("WORKBENCH_PROGRESS", str(path))
    report_progress(0, 10, "loading")
    assert json.loads(path.read_text())["first_time"] is None
    report_progress(10, 10, "done")  # the last report is always written
    p = json.loads(path.read_text())
    assert p["first_done"] == 1.0 and p["first_time"] is not None
