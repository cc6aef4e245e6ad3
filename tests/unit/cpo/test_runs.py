"""The run registry: failure causes, joining the checkpoint series, comparison rows."""

import json

import pytest

from core.cpo import runs
from core.errors import InputError
from core.jobs import supervisor as jobs
from core.models.checkpoints import read_checkpoint
from core.models.series import adapter_name


def test_failure_cause_names_the_exception_or_out_of_memory():
    log = "step 1\nTraceback (most recent call last):\n  File x\nValueError: pair 3: chosen is empty\n"
    assert runs.failure_cause(log) == "ValueError: pair 3: chosen is empty"
    oom = "step 4\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    assert runs.failure_cause(oom).startswith("out of memory: torch.OutOfMemoryError")
    assert runs.failure_cause("workbench: error: run.json: field 'lr' must be > 0\n") == \
        "workbench: error: run.json: field 'lr' must be > 0"
    assert runs.failure_cause("") == "the run ended without any output"


def _run(tmp_path, init: str | None) -> runs.Run:
    out = tmp_path / "runs" / "cpo" / "cpo-test"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "adapter" / "trainer_state.json").write_text(json.dumps({"global_step": 30, "log_history": []}))
    return runs.Run(1, "cpo-test", "cpo", {"init_adapter": init}, "d.jsonl", None, None, "running", None, out,
                    None, None, 0.0, 0.0)


def test_a_finished_run_joins_the_series_after_the_checkpoint_it_repairs(tmp_path, sample_world):
    run = _run(tmp_path, str(sample_world / "rft" / "checkpoint-160"))
    assert runs.join_series(run) == 190
    assert runs.join_series(run) == 190  # once only
    info = read_checkpoint(run.adapter_dir)
    assert info.step == 190 and adapter_name(info) == "cpo-test"
    state = json.loads((run.adapter_dir / "trainer_state.json").read_text())
    assert state["run_steps"] == 30


def test_a_run_started_from_another_run_is_measured_against_that_run(tmp_path, sample_world):
    """Runs come newest first from the store; in the series each comes after its start, so a run from another
    run's adapter is scored against that run ("KL to start"), not against the base."""
    from core.models.branches import run_branches, series_parents

    def made(name, init, created):
        out = tmp_path / "runs" / "cpo" / name
        (out / "adapter").mkdir(parents=True)
        (out / "adapter" / "adapter_config.json").write_text("{}")
        (out / "adapter" / "trainer_state.json").write_text(json.dumps({"global_step": 5, "log_history": []}))
        (out / "config.json").write_text(json.dumps({"init_adapter": init}))
        run = runs.Run(int(created), name, "cpo", {"init_adapter": init}, "d", None, None, "done", None, out, None,
                       None, created, created)
        runs.join_series(run)
        return run

    first = made("first", str(sample_world / "rft" / "checkpoint-160"), 1.0)
    second = made("second", str(first.adapter_dir), 2.0)
    rft = [sample_world / "rft" / f"checkpoint-{s}" for s in (40, 80, 120, 160)]
    series = runs.series_with_runs(rft, [second, first]).split(";")  # as list_runs gives them: newest first
    assert series[-2:] == [str(first.adapter_dir), str(second.adapter_dir)]
    starts = {name: b.start for name, b in run_branches(series).items()}
    assert starts == {"first": "checkpoint-160", "second": "first"}
    names = ["base", "checkpoint-40", "checkpoint-80", "checkpoint-120", "checkpoint-160", "first", "second"]
    assert series_parents(names, starts)["second"] == "first"


def test_a_run_from_the_base_starts_at_step_zero(tmp_path):
    assert runs.join_series(_run(tmp_path, None)) == 30


def test_comparison_puts_the_start_first(sample_world):
    before = runs.start_metrics(sample_world, str(sample_world / "rft" / "checkpoint-160"))
    assert before["accuracy"] < 0.7 and before["opacity_to_lung_opacity"] == 1.0
    done = runs.Run(2, "cpo-a", "cpo", {}, "d", None, None, "done", None, sample_world, None,
                    {"accuracy": 0.8, "flip_rate": 0.05}, 0.0, 0.0)
    pending = runs.Run(3, "cpo-b", "cpo", {}, "d", None, None, "running", None, sample_world, None, None, 0.0, 0.0)
    table = runs.comparison([done, pending], before)
    assert list(table["run"]) == ["before (start checkpoint)", "cpo-a"]
    assert runs.start_metrics(sample_world, None)["accuracy"] > 0.9  # the SFT base's recorded row


@pytest.mark.slow
def test_a_run_job_is_cancelled_gracefully_then_resumed_to_the_end(quick_world, tmp_path):
    import time

    from core.cpo.config import TrainConfig
    from core.workspace.workspace import Workspace
    from workbench.demo.preferences import build_preferences

    ws = Workspace.open(tmp_path / "ws")
    data = build_preferences(quick_world, tmp_path / "pairs.jsonl", n=32)
    cfg = TrainConfig(base_model=str(quick_world / "model"), data=str(data), output_dir=str(tmp_path / "unused"),
                      init_adapter=str(quick_world / "rft" / "checkpoint-4"), max_steps=400, batch_size=2,
                      save_steps=5, learning_rate=1e-3, base_names=["cxr-demo-tiny-llama"])
    run = runs.launch(ws, cfg, "cpo-cancel")
    assert run.status == "running" and run.output_dir == ws.runs_dir / "cpo" / "cpo-cancel"
    with pytest.raises(InputError, match="taken"):
        runs.launch(ws, cfg, "cpo-cancel")
    deadline = time.monotonic() + 180
    while runs.metrics(run).shape[0] < 6:  # a few steps logged
        assert time.monotonic() < deadline and runs.refresh(ws, run.id).status == "running", run.job_handle().log_tail()
        time.sleep(0.5)
    assert runs.cancel(ws, run.id)
    while (run := runs.refresh(ws, run.id)).status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert run.status == "cancelled" and (run.adapter_dir / "adapter_config.json").is_file()
    stopped_at = runs.metrics(run)["step"].max()
    assert stopped_at < 400

    cfg2 = TrainConfig.load(run.config_path)
    cfg2.max_steps = int(stopped_at) + 6  # resume, a few steps more
    cfg2.save(run.config_path)
    run = runs.resume(ws, run.id)
    assert run.status == "running" and not TrainConfig.load(run.config_path).resume  # config.json reusable as is
    assert TrainConfig.load(run.output_dir / runs.RESUME_CONFIG).resume
    while (run := runs.refresh(ws, run.id)).status == "running":
        assert time.monotonic() < deadline + 120, run.job_handle().log_tail()
        time.sleep(0.5)
    assert run.status == "done", run.error
    steps = runs.metrics(run)["step"]
    assert steps.max() == stopped_at + 6 and steps.min() <= 1  # one history, continued after the cancel
    ws.store.close()


def test_a_failing_run_shows_its_cause(quick_world, tmp_path):
    import time

    from core.cpo.config import TrainConfig
    from core.workspace.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "same", "rejected": "same"}\n')
    cfg = TrainConfig(base_model=str(quick_world / "model"), data=str(bad), output_dir=str(tmp_path / "x"),
                      max_steps=2, base_names=["cxr-demo-tiny-llama"])
    run = runs.launch(ws, cfg, "cpo-bad")
    deadline = time.monotonic() + 120
    while (run := runs.refresh(ws, run.id)).status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert run.status == "failed" and "bad.jsonl" in run.error, run.error
    ws.store.close()


def test_failure_cause_names_the_ending_not_a_progress_line():
    assert runs.failure_cause("train: 40%|####  | step 4/10 loss 0.69\n", "killed by SIGKILL") == \
        "killed by SIGKILL; no error message in the log"
    assert runs.failure_cause("step 1\nValueError: bad pair\n", "exit code 1") == "exit code 1: ValueError: bad pair"


def _wait(cond, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_run_whose_supervisor_is_killed_stays_running_and_cannot_be_resumed_twice(quick_world, tmp_path):
    """Killing the supervisor leaves the trainer running: the run stays 'running', Resume is refused while
    the trainer lives, and once it is gone the cause says what happened (signal or missing exit code)."""
    import os
    import signal

    from core.cpo.config import TrainConfig
    from core.workspace.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    cfg = TrainConfig(base_model=str(quick_world / "model"), data=str(tmp_path / "none.jsonl"),
                      output_dir=str(tmp_path / "x"), max_steps=2, base_names=["cxr-demo-tiny-llama"])
    run = runs.launch(ws, cfg, "cpo-orphan")
    job = run.job_handle()
    _wait(lambda: job.worker() is not None)
    os.kill(job.pid, signal.SIGKILL)  # the supervisor only
    _wait(lambda: not jobs._alive(job.pid))
    assert runs.refresh(ws, run.id).status == "running"
    with pytest.raises(InputError, match="it is running"):
        runs.resume(ws, run.id)
    runs._update(ws.store, run.id, status="failed")  # as an older workbench marked it
    with pytest.raises(InputError, match="still runs"):
        runs.resume(ws, run.id)
    runs._update(ws.store, run.id, status="running")
    os.kill(job.worker()["pid"], signal.SIGKILL)
    _wait(lambda: runs.refresh(ws, run.id).status != "running")
    assert "no exit code was recorded" in runs.get(ws.store, run.id).error

    run2 = runs.launch(ws, cfg, "cpo-killed")
    job2 = run2.job_handle()
    _wait(lambda: job2.worker() is not None)
    os.kill(job2.worker()["pid"], signal.SIGKILL)  # the worker: its supervisor records the signal
    _wait(lambda: runs.refresh(ws, run2.id).status != "running")
    assert runs.get(ws.store, run2.id).error.startswith("killed by SIGKILL")
    ws.store.close()


def test_two_tabs_launching_one_name_the_second_is_told_and_writes_nothing(tmp_path, monkeypatch):
    """Both tabs pass the name check before either registers: the database's UNIQUE name decides, and the
    loser gets a clear refusal (not an IntegrityError) before it writes a folder or a config.json."""
    from core.cpo.config import TrainConfig
    from core.workspace.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    cfg = TrainConfig(base_model="m", data="d.jsonl", output_dir=str(tmp_path / "unused"))
    with ws.store.transaction() as con:  # the other tab, just now
        con.execute("INSERT INTO runs (name, objective, config, data, status, output_dir, created_at, updated_at) "
                    "VALUES ('same', 'cpo', '{}', 'd', 'running', 'elsewhere', 0, 0)")
    real = ws.store.query_one
    monkeypatch.setattr(ws.store, "query_one", lambda sql, *a: None if "FROM runs WHERE name" in sql else real(sql, *a))
    with pytest.raises(InputError, match=r"run name 'same' is taken \(another tab started it just now\)"):
        runs.launch(ws, cfg, "same")
    assert not ws.cpo_run_dir("same").exists()
