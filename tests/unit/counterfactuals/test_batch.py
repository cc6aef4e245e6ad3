"""The counterfactual batch as a background job: runs from its saved config, reports progress, stops on
Cancel with what finished stored, and fails with a clear message on a bad config."""

from __future__ import annotations

import pytest

from core.counterfactuals import batch as cf_job
from core.counterfactuals.store import list_counterfactuals
from core.errors import InputError
from core.jobs import registry
from core.jobs import supervisor as jobs
from core.workspace.workspace import Workspace
from core.workspace.world import load_world


def _cfg(ws, sample_world, **kw) -> cf_job.BatchConfig:
    return cf_job.BatchConfig(workspace=str(ws.root), world=str(sample_world), dataset="test", **kw)


def test_a_batch_stores_its_counterfactuals_and_reports_progress(tmp_path, sample_world):
    ws = Workspace.open(tmp_path / "ws")
    seen = []
    last = cf_job.run(_cfg(ws, sample_world, n=3, mode="all"), lambda d, t, m: seen.append((d, t, m)))
    assert (last.done, last.total) == (3, 3) and [s[0] for s in seen] == [1, 2, 3]
    table = list_counterfactuals(ws.store, cf_job.source_of(load_world(sample_world).name, "test"))
    assert table["trajectory"].nunique() == 3 and len(table) == last.stored > 0


def test_cancel_stops_after_the_current_trajectory(tmp_path, sample_world):
    ws = Workspace.open(tmp_path / "ws")
    calls = iter([False, True])
    last = cf_job.run(_cfg(ws, sample_world, n=10, mode="all"), should_cancel=lambda: next(calls))
    assert last.done == 2 and len(list_counterfactuals(ws.store)) == last.stored


def test_a_bad_config_is_refused_by_name(tmp_path, sample_world):
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(ValueError, match="mode 'one' needs a target"):
        _cfg(ws, sample_world, mode="one")
    with pytest.raises(ValueError, match="field 'method': expected one of graph, llm, image_swap, got 'rules'"):
        _cfg(ws, sample_world, method="rules")
    with pytest.raises(ValueError, match="needs expert_checkpoint"):
        _cfg(ws, sample_world, method="llm")
    cfg = _cfg(ws, sample_world, n=2, target="Edema", mode="one")
    assert cf_job.BatchConfig.load(cfg.save(tmp_path / "c.json")) == cfg
    (tmp_path / "bad.json").write_text('{"workspace": "w"}')
    with pytest.raises(InputError, match="bad.json: missing field 'world'"):
        cf_job.BatchConfig.load(tmp_path / "bad.json")


def test_the_batch_runs_as_a_background_job(tmp_path, sample_world):
    ws = Workspace.open(tmp_path / "ws")
    job = registry.launch(ws, cf_job.KIND, _cfg(ws, sample_world, n=4, mode="all"))  # like every job
    assert job.wait(timeout=120) == "done", job.log_tail()
    assert jobs.list_jobs(ws.job_dirs, cf_job.KIND)[0].id == job.id
    assert job.progress()["done"] == 1.0 and "4 of 4 trajectories" in job.progress()["message"]
    assert list_counterfactuals(ws.store)["trajectory"].nunique() == 4
    assert job.argv[:3] == ["-m", "core.jobs.worker", "counterfactuals"]
    broken = registry.launch(ws, cf_job.KIND, _cfg(ws, tmp_path / "no-world", n=1))
    assert broken.wait(timeout=120) == "failed" and "no-world" in broken.log_tail()
