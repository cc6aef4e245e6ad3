"""A cancelled counterfactual batch says what it did (issue 24: "cancelled · 2 s" beside 2,186 stored items).

Root cause, reproduced with a real batch job: the job's duration was right (``exit.json``'s end minus ``job.json``'s
start: graph rewrites store hundreds of counterfactuals a second), its count was not. The batch counted every
counterfactual it met as stored, also those the database held before (a rerun over stored studies "stored" 1,174
and added none), and its last report lagged (reports are written at most every 0.3 s, and the one held back at
Cancel was lost: 1,368 reported, 1,433 in the database)."""

import json
import random
import re
import time

import pytest

from core.counterfactuals import batch as cf_job
from core.counterfactuals.store import list_counterfactuals
from core.graph import concepts
from core.jobs import registry
from core.progress import flush_progress, report_progress
from core.workspace.workspace import Workspace
from core.workspace.world import create_world
from tests import foreign


def test_a_report_held_back_by_the_rate_limit_is_written_when_the_job_ends(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    monkeypatch.setenv("WORKBENCH_PROGRESS", str(path))
    report_progress(1, 10, "1 of 10")
    report_progress(2, 10, "2 of 10")  # within 0.3 s of the first: held back
    assert json.loads(path.read_text())["message"] == "1 of 10"
    flush_progress()
    assert json.loads(path.read_text())["message"] == "2 of 10"
    flush_progress()  # nothing held back: nothing written again
    assert json.loads(path.read_text())["done"] == 0.2


def _world(tmp_path, foreign_run, name: str, n: int):
    concepts.save_graph(foreign.concept_graph(), tmp_path / "graph.json")
    rng = random.Random(0)
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(_numbered(foreign.conversation(rng, i), i)) + "\n" for i in range(n)))
    return create_world(tmp_path / name, name, foreign_run["base"], [foreign_run["run"]], [data],
                        graph=tmp_path / "graph.json")


def _numbered(record: dict, i: int) -> dict:
    """The foreign run's conversation as study ``i`` (its report numbered: each study its own item, not a duplicate)."""
    record["messages"][1]["content"] = f"Study {i}. " + record["messages"][1]["content"]
    return record


@pytest.mark.slow
def test_a_cancelled_batch_reports_what_it_stored_and_how_long_it_ran(tmp_path, foreign_run):
    """A real batch job over a foreign run's conversations, started through the registry after the first studies
    were stored once already, cancelled while it stores: its last report counts this job's new items (the
    database's, to the item), those stored before apart, and its duration spans the items it wrote."""
    ws = Workspace.open(tmp_path / "ws")
    world = _world(tmp_path, foreign_run, "trl-run", 20_000)
    cfg = cf_job.BatchConfig(workspace=str(ws.root), world=str(world.root), dataset="trl-run", n=20_000, mode="all")
    before = cf_job.run(cf_job.BatchConfig(**{**cfg.to_dict(), "n": 30})).stored  # the first 30 studies, stored
    job = registry.launch(ws, cf_job.KIND, cfg, title="batch")
    deadline = time.monotonic() + 180
    while "stored" not in job.progress()["message"] or int(re.search(r"(\d+) new", job.progress()["message"])[1]) < 50:
        assert job.state() == "running" and time.monotonic() < deadline, job.log_tail()
        time.sleep(0.2)
    assert job.cancel() and job.wait(120) == "cancelled", job.log_tail()
    message = job.progress()["message"]
    stored, new, old = map(int, re.search(r"(\d+) counterfactuals stored \((\d+) new, (\d+) stored before\)",
                                          message).groups())
    table = list_counterfactuals(ws.store, world=world.key)
    assert (new, old, stored) == (len(table) - before, before, len(table)), message
    mine = table.sort_values("created_at")["created_at"].iloc[before:]
    ended = job.exit_info()["ended_at"]
    assert job.progress()["elapsed_s"] == pytest.approx(ended - job.started_at)
    assert job.started_at <= mine.min() <= mine.max() <= ended  # what it stored lies within the time it shows
