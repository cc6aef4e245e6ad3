"""Jobs, CPO runs and analyses of two worlds in one workspace (issue 24): each is recorded with its world and a page
lists the open world's; a finished job's duration does not grow; a comparison without its start says why."""

import json
import os
import time
from types import SimpleNamespace

from core.counterfactuals.batch import BatchConfig
from core.cpo import runs
from core.drift.analysis import of_world
from core.jobs import registry
from core.jobs import supervisor as jobs
from core.workspace.workspace import Workspace


def _worlds(tmp_path):
    a, b = tmp_path / "worlds" / "trl-run", tmp_path / "worlds" / "swift-run"
    for w in (a, b):
        w.mkdir(parents=True)
    return a, b


def test_each_worlds_jobs_are_listed_apart(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    a, b = _worlds(tmp_path)
    started = {}
    for w in (a, b):  # a batch of a world that has no such dataset: it fails at once, and lists all the same
        cfg = BatchConfig(workspace=str(ws.root), world=str(w), dataset="train", n=1)
        started[w] = registry.launch(ws, "counterfactuals", cfg, title=f"batch of {w.name}")
    score = registry.launch(ws, "counterfactuals", BatchConfig(workspace=str(ws.root), world=str(a), dataset="x"),
                            world=b)  # an explicit world wins over the config's
    for job in [*started.values(), score]:
        job.wait(120)
    assert [j.id for j in jobs.list_jobs(ws.job_dirs, "counterfactuals", a)] == [started[a].id]
    assert {j.id for j in jobs.list_jobs(ws.job_dirs, "counterfactuals", b)} == {started[b].id, score.id}
    assert len(jobs.list_jobs(ws.job_dirs, "counterfactuals")) == 3  # every world's: only when asked for
    assert started[a].meta["world"] == str(a.resolve())


def test_a_job_that_ended_without_a_record_keeps_its_duration(tmp_path):
    folder = tmp_path / "jobs" / "counterfactuals-1"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"kind": "counterfactuals", "title": "t", "argv": [],
                                                 "started_at": time.time() - 100, "pid": None, "meta": {}}))
    (folder / "progress.json").write_text(json.dumps({"done": 0.5, "message": "1 of 2 trajectories, 2186 stored"}))
    os.utime(folder / "progress.json", (time.time() - 40, time.time() - 40))
    os.utime(folder / "job.json", (time.time() - 100, time.time() - 100))
    job = jobs.list_jobs(tmp_path / "jobs")[0]
    first = job.progress()["elapsed_s"]
    time.sleep(1.1)
    assert job.state() == "died" and 55 < first < 65 and job.progress()["elapsed_s"] == first


def _run(id_, name, world, evaluation=None):
    return runs.Run(id_, name, "cpo", {}, "d", None, world and str(world), "done", None, world or "", None,
                    evaluation, float(id_), float(id_))


def test_runs_are_listed_per_world_and_a_missing_start_row_is_said(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    a, b = _worlds(tmp_path)
    with ws.store.transaction() as con:
        for i, (name, w) in enumerate((("repair-trl", a), ("repair-swift", b), ("old", None))):
            con.execute("INSERT INTO runs (name, objective, config, data, snapshot, world, status, output_dir, "
                        "created_at, updated_at) VALUES (?, 'cpo', '{}', 'd', NULL, ?, 'done', 'o', ?, ?)",
                        (name, w and str(w), i, i))
    assert [r.name for r in runs.list_runs(ws.store, a)] == ["repair-trl"]
    assert [r.name for r in runs.list_runs(ws.store, b)] == ["repair-swift"]
    assert len(runs.list_runs(ws.store)) == 3
    partial = _run(1, "quick", a, {"accuracy": 0.5, "held_out_limit": 8})
    assert "first studies only" in runs.start_note([partial], {"accuracy": 0.4})
    assert "workbench evaluate" in runs.start_note([_run(2, "full", a, {"accuracy": 0.5})], None, "checkpoint-4")
    assert runs.start_note([_run(2, "full", a, {"accuracy": 0.5})], {"accuracy": 0.4}) is None


def test_the_explorer_offers_the_worlds_own_analyses(tmp_path):
    a, b = _worlds(tmp_path)
    data_a, data_b = a / "train.jsonl", b / "train.jsonl"

    def world(root, data):
        return SimpleNamespace(analysis_dir=None, manifest={"datasets": {"train": {}}},
                               dataset_path=lambda n: data, base_model_dir=tmp_path / "base")

    def analysis(name, data):
        return SimpleNamespace(path=tmp_path / "analyses" / name, config=SimpleNamespace(base=str(tmp_path / "base"),
                                                                                         data=str(data)))
    found = [analysis("of-a", data_a), analysis("of-b", data_b), analysis("uploaded", tmp_path / "up.jsonl")]
    assert [x.path.name for x in of_world(found, world(a, data_a))] == ["of-a"]
    recorded = {str(tmp_path / "analyses" / "uploaded")}  # a scoring job of world b wrote it
    assert [x.path.name for x in of_world(found, world(b, data_b), recorded)] == ["of-b", "uploaded"]
